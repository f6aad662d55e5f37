"""QEMU's error texts that more than one place raises, by name (QEMU keeps its own in
include/qapi/qmp/qerror.h; the QERR_* names are kept where QEMU has one).

Every text here is the same in every QEMU version the emulator speaks, so any layer may use it
without knowing the version.  Texts that differ between versions live in the version profiles
(emulator/versions.py, ErrorTexts), read as `profile.errors.NAME`: together they are one
version's catalogue.  When a new version rewords a text of this module, move it to ErrorTexts
and give its callers the profile.

Texts are printf-style templates, as in QEMU: `QemuError(qerror.DEVICE_IN_USE % name)`.  The
emulator's own texts for what it does not model are at the end.
"""

# ---- qerror.h --------------------------------------------------------------------------------
DEVICE_IN_USE = "Device '%s' is in use"
INVALID_PARAMETER = "Invalid parameter '%s'"
INVALID_PARAMETER_TYPE = "Invalid parameter type for '%s', expected: %s"
INVALID_PARAMETER_VALUE = "Parameter '%s' expects %s"
MISSING_PARAMETER = "Parameter '%s' is missing"

# ---- QAPI and option parsing -------------------------------------------------------------------
#: qapi_enum_parse / visit_type_enum: a value the enum (or option) does not have.
PARAMETER_VALUE_REFUSED = "Parameter '%s' does not accept value '%s'"
#: The hint that follows INVALID_PARAMETER_VALUE % ("id", "an identifier") (id_wellformed).
ID_NOT_WELLFORMED = ("Parameter 'id' expects an identifier\n"
                     "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.")

# ---- the block graph ---------------------------------------------------------------------------
#: bdrv_lookup_bs.
DEVICE_OR_NODE_NOT_FOUND = "Cannot find device='%s' nor node-name='%s'"
#: block_dirty_bitmap_lookup (and copy-before-write's bitmap option).
NODE_NOT_FOUND = "Node '%s' not found"
DIRTY_BITMAP_NOT_FOUND = "Dirty bitmap '%s' not found"
#: bdrv_find_node failures of blockdev-del and blockdev-reopen.
NODE_NAME_NOT_FOUND = "Failed to find node with node-name='%s'"
UNKNOWN_DRIVER = "Unknown driver '%s'"
DUPLICATE_DRIVE_ID = "Duplicate ID '%s' for drive"
#: file-posix's open failure ('%s': the file name, then strerror).
COULD_NOT_OPEN = "Could not open '%s': %s"
COULD_NOT_OPEN_BACKING = "Could not open backing file: %s"
#: bdrv_insert_node's prefix for a filter that cannot be opened.
COULD_NOT_CREATE_NODE = "Could not create node: %s"

# ---- dirty bitmaps -----------------------------------------------------------------------------
BITMAP_EXISTS = "Bitmap already exists: %s"
GRANULARITY_INVALID = "Granularity must be power of 2 and at least 512"

# ---- image formats -----------------------------------------------------------------------------
IMAGE_SIZE_NOT_SECTOR_MULTIPLE = "Image size must be a multiple of 512 bytes"
BACKING_FMT_WITHOUT_FILE = "Backing format cannot be used without backing file"
BACKING_FILE_NAME_TOO_LONG = "Backing file name too long"
L1_TABLE_TOO_LARGE = "Active L1 table too large"
BITMAPS_EXT_INVALID_LENGTH = "bitmaps_ext: Invalid extension length"
BITMAP_DIRECTORY_BROKEN = "Broken bitmap directory"
BITMAP_WRITE_FAILED = "Failed to write bitmap '%s' to file: %s"
BITMAP_EXT_UPDATE_FAILED = "Failed to update bitmap extension: %s"
BITMAP_DIRECTORY_UPDATE_FAILED = "Can't update bitmap directory: %s"

# ---- drivers -----------------------------------------------------------------------------------
BLKDEBUG_INVALID_VALUE = "invalid parameter value: %s"
THROTTLE_BPS_CONFLICT = "bps(iops) and bps(iops)_rd/_wr cannot be used at the same time"

# ---- the machine and its command line ------------------------------------------------------------
FD_NUMBER_UNPARSABLE = "Unable to parse FD number %s"
#: A board-created drive the machine type has no bus for (if, bus, unit).
MACHINE_NO_DRIVE_BUS = "machine type does not support if=%s,bus=%s,unit=%s"

# ---- what the emulator does not model (its own texts, not QEMU's) -------------------------------
EMULATOR_NO_CHARDEV = "char driver '%s' is not supported by the blocktxn emulator"
EMULATOR_NO_OBJECT = "object type '%s' is not supported by the blocktxn emulator"
EMULATOR_NO_OPTION = "Option '%s' is not supported by the emulator"
EMULATOR_NO_PREALLOCATION = "Preallocation modes other than 'off' are not supported by the emulator"
EMULATOR_NO_DATA_FILE = ("External data files are not supported by the emulator "
                         "(incompatible feature 'external data file')")
