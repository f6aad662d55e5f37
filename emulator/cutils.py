"""QEMU's small utility functions that more than one layer needs, ported once.

- qemu_strtoi64 / qemu_strtou64 / qemu_strtosz: util/cutils.c's number and size parsers (the QAPI
  keyval visitor, QemuOpts numbers, qemu-io's and qemu-img's cvtnum all use them);
- id_wellformed: util/id.c's rule for user-given ids (node names, job ids, drive and device ids).

The parsers raise OSError(EINVAL) or OSError(ERANGE) where the C functions return -EINVAL or
-ERANGE; each caller words the error as its QEMU counterpart does ("Parameter 'x' expects size",
qemu-io's "Parsing error: ...").  Like C's strtoull, they accept leading white space (isspace in
the C locale) and nothing else around the number.
"""

from __future__ import annotations

import errno
import re

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1

#: isspace() in the C locale.
_SPACE = "[ \t\n\v\f\r]*"
#: strtoll/strtoull with base 0: 0x.. hex, 0.. octal, else decimal.
_STRTOX = re.compile(_SPACE + r"([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")
#: More significant digits than any 64-bit number has, in any base used here (octal: 22).  Longer
#: numbers overflow (ERANGE) without being converted (Python limits int() of long strings).
_MAX_DIGITS = 24

_ID = re.compile(r"[A-Za-z][A-Za-z0-9._-]*")


def _einval() -> OSError:
    return OSError(errno.EINVAL, "Invalid argument")


def _erange() -> OSError:
    return OSError(errno.ERANGE, "Numerical result out of range")


def _strtox(text: str) -> int:
    """The whole of `text` as strtoll(text, &end, 0) reads it, sign applied, unbounded."""
    match = _STRTOX.fullmatch(text)
    if not match:
        raise _einval()
    sign, digits = match.groups()
    if len(digits.lstrip("0xX")) > _MAX_DIGITS:
        raise _erange()
    if digits[:2] in ("0x", "0X"):
        magnitude = int(digits, 16)
    elif digits.startswith("0"):
        magnitude = int(digits, 8)
    else:
        magnitude = int(digits)
    return -magnitude if sign == "-" else magnitude


def qemu_strtoi64(text: str) -> int:
    """qemu_strtoi64(text, NULL, 0, &result): the whole string as a signed 64-bit number."""
    value = _strtox(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _erange()
    return value


def qemu_strtou64(text: str) -> int:
    """qemu_strtou64(text, NULL, 0, &result): as strtoull, a negative number wraps around."""
    value = _strtox(text)
    if abs(value) > UINT64_MAX:
        raise _erange()
    return value & UINT64_MAX


_SIZE_SUFFIXES = {"b": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_INTEGRAL = re.compile(_SPACE + r"([+-]?)([0-9]+)")
_SIZE_HEX = re.compile(_SPACE + r"([+-]?)0[xX]([0-9a-fA-F]+)")
_SIZE_FRACTION = re.compile(r"\.[0-9]*(?:[eE][+-]?[0-9]+)?")


def qemu_strtosz(text: str) -> int:
    """qemu_strtosz(text, NULL, &result): a byte count with an optional binary suffix
    (B, k, M, G, T, P, E; 1024-based), e.g. "64M", "1.5k", "0x400".

    Measured on QEMU 7.2.22 and 10.0.2: no space before the suffix ("1 k" is EINVAL), a fraction
    needs a suffix unless it is zero ("1.0" is 1), and fractions are exact 64.64 fixed point
    rounded half up ("1.555...k" is 1593).  Hex numbers take a suffix here, as in 7.2 (which
    warns that this is deprecated; 10.0 refuses it).
    """
    match = _SIZE_INTEGRAL.match(text)
    if not match or match.group(1) == "-":
        raise _einval()
    if len(match.group(2).lstrip("0")) > _MAX_DIGITS:
        raise _erange()
    value, end = int(match.group(2)), match.end()
    if value > UINT64_MAX:
        raise _erange()
    fraction = 0  # 64-bit fixed point
    if value == 0 and text[end:end + 1] in ("x", "X"):
        hex_match = _SIZE_HEX.match(text)
        if not hex_match:
            raise _einval()
        if len(hex_match.group(2).lstrip("0")) > _MAX_DIGITS:
            raise _erange()
        value, end = int(hex_match.group(2), 16), hex_match.end()
        if value > UINT64_MAX:
            raise _erange()
        if text[end:end + 1] == ".":
            raise _einval()
    elif text[end:end + 1] == ".":
        fraction_match = _SIZE_FRACTION.match(text, end)
        digits = fraction_match.group(0) if fraction_match else "."
        if digits == ".":
            end += 1  # strtod fails on "." alone: QEMU skips it, fraction 0 ("1.k" works)
        elif "e" in digits or "E" in digits:
            raise _einval()
        else:
            fraction = int(float("0" + digits) * 2**64)
            end += len(digits)
    unit = text[end:end + 1].lower()
    if unit and unit in _SIZE_SUFFIXES:
        multiplier = 1024 ** _SIZE_SUFFIXES[unit]
        end += 1
    else:
        multiplier = 1
    if multiplier == 1:
        if fraction:
            raise _einval()
    else:
        product = fraction * multiplier
        value = value * multiplier + (product >> 64) + ((product >> 63) & 1)
        if value > UINT64_MAX:
            raise _erange()
    if end != len(text):
        raise _einval()
    return value


def id_wellformed(name: str) -> bool:
    """id_wellformed(): an ASCII letter, then ASCII letters, digits, '-', '.' and '_'."""
    return _ID.fullmatch(name) is not None
