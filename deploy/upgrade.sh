#!/bin/sh
# Upgrades lorawan-edge: the same as `deploy/install.sh --upgrade` (see there for the options).
# A new venv gets the package, must pass `edge validate` on the current configuration, and then
# replaces the old one; config, drop-ins and the buffer stay; the service restarts and the buffer's
# schema migrations run at its start. `deploy/install.sh --rollback` goes back one version.
set -eu
exec "$(dirname -- "$0")/install.sh" --upgrade "$@"
