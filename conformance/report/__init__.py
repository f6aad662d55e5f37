"""What a conformance run reports: summary (per-target outcome counts and the terminal summary)
and html (report.html: the case x target matrix, golden diffs, job timelines, what changed
between QEMU versions; templates/ holds its Jinja template)."""
