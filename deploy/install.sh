#!/bin/sh
# Installs, upgrades or rolls back lorawan-edge on Debian 12 / Raspberry Pi OS (arm64, armhf, x86_64).
#
#   deploy/install.sh               install: user, venv under /opt, config, unit; idempotent
#   deploy/install.sh --upgrade     reinstall the package (new venv, swapped in after `edge validate`),
#                                   keep config and buffer, restart (buffer migrations run at start)
#   deploy/install.sh --rollback    switch back to the venv the last upgrade replaced, restart
#   deploy/uninstall.sh [--purge]   remove (deploy/upgrade.sh is `install.sh --upgrade`)
#
# Layout (everything under --prefix DIR when given):
#   /opt/lorawan-edge/venv -> venvs/<stamp>   the running venv; the previous one is kept for --rollback
#   /etc/lorawan-edge/edge.toml               created from deploy/edge.toml.example only if absent
#   /etc/lorawan-edge/edge.d/*.toml           drop-ins (deploy/edge.d/README.md), never touched
#   /etc/default/lorawan-edge                 EnvironmentFile: EDGE__SECTION__KEY overrides; created if absent
#   /var/lib/lorawan-edge/                    the buffer (StateDirectory=); never touched
#   /etc/systemd/system/lorawan-edge.service  systemd/lorawan-edge.service, unchanged; local changes
#                                             go in lorawan-edge.service.d/*.conf
#
# pip honours PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS and PIP_NO_INDEX (offline wheelhouse).
set -eu

NAME=lorawan-edge
SCRIPT_DIR=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
REPO_DIR=$(dirname -- "$SCRIPT_DIR")

PREFIX=""
SOURCE=""
MODE=install
SYSTEMD=1
CREATE_USER=""
PYTHON=""

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

usage() {
    cat <<EOF
Usage: $0 [--upgrade | --rollback] [options]

Options:
  --prefix DIR    install below DIR (DIR/opt, DIR/etc, DIR/var/lib): a test root or an image
                  being built; systemctl then only enables the unit inside DIR (--root)
  --source PATH   what to pip install: a project checkout, a wheel or an sdist
                  (default: $REPO_DIR)
  --python PATH   the Python 3.11+ to build the venv with (default: /usr/bin/python3)
  --no-systemd    never call systemctl (containers, tests)
  --no-user       do not create the $NAME system user (the default with --prefix)
  --user          create the user, inside DIR with --prefix (useradd --root)
  --upgrade       reinstall the package into a new venv, keep config and buffer, restart
  --rollback      go back to the venv that the last --upgrade replaced, restart
  -h, --help      this help
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --source) [ $# -ge 2 ] || die "--source needs a path"; SOURCE=$2; shift ;;
        --source=*) SOURCE=${1#*=} ;;
        --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift ;;
        --python=*) PYTHON=${1#*=} ;;
        --no-systemd) SYSTEMD=0 ;;
        --no-user) CREATE_USER=0 ;;
        --user) CREATE_USER=1 ;;
        --upgrade) MODE=upgrade ;;
        --rollback) MODE=rollback ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[ -n "$SOURCE" ] || SOURCE=$REPO_DIR
[ -e "$SOURCE" ] || die "--source $SOURCE does not exist"

# --prefix / is a real install; any other prefix is made absolute (symlinks and the unit need it).
if [ -n "$PREFIX" ]; then
    mkdir -p -- "$PREFIX"
    PREFIX=$(CDPATH='' cd -- "$PREFIX" && pwd)
    [ "$PREFIX" = / ] && PREFIX=""
fi
# A test or image root never gets a user on the host: only --user asks for one (inside the root).
[ -n "$CREATE_USER" ] || { [ -z "$PREFIX" ] && CREATE_USER=1 || CREATE_USER=0; }

OPT=$PREFIX/opt/$NAME
VENV=$OPT/venv
ETC=$PREFIX/etc/$NAME
CONFIG=$ETC/edge.toml
DROPINS=$ETC/edge.d
DEFAULTS=$PREFIX/etc/default/$NAME
STATE=$PREFIX/var/lib/$NAME
UNIT=$PREFIX/etc/systemd/system/$NAME.service

# -- helpers ---------------------------------------------------------------------------------------

# The numeric id of the $NAME group on the target system (inside --prefix when given), or nothing.
group_id() {
    if [ -n "$PREFIX" ]; then
        [ -f "$PREFIX/etc/group" ] && awk -F: -v n="$NAME" '$1 == n { print $3 }' "$PREFIX/etc/group"
    else
        getent group "$NAME" | cut -d: -f3
    fi
    return 0
}

user_id() {
    if [ -n "$PREFIX" ]; then
        [ -f "$PREFIX/etc/passwd" ] && awk -F: -v n="$NAME" '$1 == n { print $3 }' "$PREFIX/etc/passwd"
    else
        getent passwd "$NAME" | cut -d: -f3
    fi
    return 0
}

# Owner root, group $NAME when that group exists (as root only: tests run without it).
give_to_group() {
    gid=$(group_id)
    if [ -n "$gid" ] && [ "$(id -u)" -eq 0 ]; then
        chown "0:$gid" "$@"
    fi
}

# Copy $1 to $2 with mode $3 unless $2 already has exactly that content (no needless writes).
install_if_changed() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        return 1
    fi
    install -m "$3" "$1" "$2"
    return 0
}

# systemctl with nothing running under us: image roots (--root) and containers without systemd.
can_systemctl() {
    [ "$SYSTEMD" -eq 1 ] || return 1
    command -v systemctl >/dev/null 2>&1 || { say "systemctl not found: skipping systemd steps"; return 1; }
    if [ -z "$PREFIX" ] && [ ! -d /run/systemd/system ]; then
        say "systemd is not running here: skipping systemd steps"
        return 1
    fi
    return 0
}

# Export the KEY=VALUE lines of an EnvironmentFile as systemd reads them (no shell evaluation:
# comments and blank lines skipped, one pair of surrounding quotes removed).
export_env_file() {
    while IFS= read -r line || [ -n "$line" ]; do
        line=${line#"${line%%[![:space:]]*}"}
        case $line in ''|'#'*|';'*) continue ;; *=*) ;; *) say "$1: ignoring line without '='"; continue ;; esac
        key=$(printf '%s' "${line%%=*}" | tr -d ' \t')
        value=${line#*=}
        case $value in
            \"*\") value=${value#\"}; value=${value%\"} ;;
            \'*\') value=${value#\'}; value=${value%\'} ;;
        esac
        case $key in
            ''|[0-9]*|*[!A-Za-z0-9_]*) say "$1: ignoring line that is not KEY=VALUE" ;;
            *) export "$key=$value" ;;
        esac
    done <"$1"
}

# `edge validate` of the configuration as the service sees it: edge.toml, edge.d/*.toml and the
# EDGE__* overrides of the EnvironmentFile.
validate_with() {
    (
        [ ! -f "$DEFAULTS" ] || export_env_file "$DEFAULTS"
        exec "$1/bin/edge" validate --config "$CONFIG"
    )
}

venv_ok() { [ -x "$1/bin/edge" ] && "$1/bin/python" -c 'import edge' >/dev/null 2>&1; }

current_venv() {
    if [ -L "$VENV" ]; then
        printf '%s\n' "$OPT/$(readlink "$VENV")"
    elif [ -d "$VENV" ]; then
        printf '%s\n' "$VENV"
    fi
}

# Point $VENV at venvs/$1 atomically (rename of a new symlink over the old one).
switch_venv() {
    if [ -d "$VENV" ] && [ ! -L "$VENV" ]; then
        rm -rf -- "${VENV:?}"  # a plain venv from elsewhere: replaced by the managed layout
    fi
    ln -sfn "venvs/$1" "$VENV.new"
    mv -T -- "$VENV.new" "$VENV"
}

# The newest working venv other than the current one: the --rollback target (stamps sort by time).
previous_venv() {
    keep=$(basename -- "$(current_venv)")
    prev=""
    for path in "$OPT"/venvs/*/; do
        dir=$(basename -- "$path")
        if [ "$dir" != "$keep" ] && venv_ok "$OPT/venvs/$dir"; then prev=$dir; fi
    done
    printf '%s\n' "$prev"
}

# Keep the current venv and the rollback target; remove older ones.
prune_venvs() {
    keep=$(basename -- "$(current_venv)")
    prev=$(previous_venv)
    for path in "$OPT"/venvs/*/; do
        dir=$(basename -- "$path")
        [ -d "$path" ] || continue
        [ "$dir" = "$keep" ] || [ "$dir" = "$prev" ] || rm -rf -- "${OPT:?}/venvs/$dir"
    done
}

# -- steps -----------------------------------------------------------------------------------------

apt_install() {
    say "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends "$@" >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

ensure_python() {
    if [ -z "$PYTHON" ]; then
        if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
    fi
    if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        # Only what the service needs; ChirpStack and Mosquitto are the operator's.
        [ "$(id -u)" -eq 0 ] || die "python3 and python3-venv are needed: run as root, or apt-get install python3-venv"
        command -v apt-get >/dev/null 2>&1 || die "python3 with venv and ensurepip is needed (not a Debian system?)"
        apt_install python3 python3-venv
        [ -n "$PYTHON" ] || PYTHON=/usr/bin/python3
    fi
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than Python 3.11 (Debian 12 / Raspberry Pi OS bookworm have 3.11)"
    arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
    case $arch in
        armhf|armel|armv7l|armv6l)
            # PyPI has no 32-bit ARM wheels of quickjs-ng, msgspec (and PyYAML): pip compiles them, which needs
            # a C compiler and the Python headers (piwheels or a wheelhouse avoid it: deploy/fleet.md).
            include=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
            if ! command -v cc >/dev/null 2>&1 || [ ! -f "$include/Python.h" ]; then
                if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
                    apt_install gcc libc6-dev python3-dev
                else
                    say "$arch: gcc and python3-dev may be needed to build quickjs-ng and msgspec"
                fi
            fi ;;
    esac
}

ensure_node_buffer() {
    # Codecs from ChirpStack's catalogue may use Node's Buffer, which ChirpStack v4 gives them from
    # the npm package `buffer`; Debian ships it as node-buffer (no Node.js needed). The gateway reads
    # it from /usr/share/nodejs (or EDGE_NODE_PATH), never from the network.
    [ -f /usr/share/nodejs/buffer/index.js ] && return 0
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt_install node-buffer
    else
        say "node-buffer is not installed: codecs that use Buffer will fail (apt-get install node-buffer)"
    fi
}

ensure_user() {
    [ "$CREATE_USER" -eq 1 ] || return 0
    [ -n "$(user_id)" ] && return 0
    say "creating system user $NAME"
    if [ -n "$PREFIX" ]; then
        useradd --root "$PREFIX" --system --user-group --no-create-home --home-dir "/var/lib/$NAME" \
            --shell /usr/sbin/nologin "$NAME"
    else
        useradd --system --user-group --no-create-home --home-dir "/var/lib/$NAME" \
            --shell /usr/sbin/nologin "$NAME"
    fi
}

ensure_dirs() {
    install -d -m 0755 "$OPT" "$OPT/venvs" "$PREFIX/etc/default" "$(dirname -- "$UNIT")"
    install -d -m 0750 "$ETC" "$DROPINS"
    give_to_group "$ETC" "$DROPINS"
    if [ ! -d "$STATE" ]; then
        install -d -m 0700 "$STATE"
        uid=$(user_id); gid=$(group_id)
        if [ -n "$uid" ] && [ -n "$gid" ] && [ "$(id -u)" -eq 0 ]; then chown "$uid:$gid" "$STATE"; fi
    fi
}

# A new venv under venvs/, with the package installed; prints its directory name.
build_venv() {
    stamp=$(date -u +%Y%m%dT%H%M%SZ)-$$
    dir=$OPT/venvs/$stamp
    say "creating $dir" >&2
    "$PYTHON" -m venv "$dir" >&2
    target=$SOURCE
    work=""
    if [ -d "$SOURCE" ]; then
        # pip builds a directory in place (build/, *.egg-info): build from a copy instead, so an
        # install never writes into the checkout it came from.
        work=$(mktemp -d)
        tar -C "$SOURCE" --exclude=./.git --exclude=./.venv --exclude=./venv --exclude=./build \
            --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ --exclude=./.mypy_cache \
            --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.hypothesis --exclude='*.sqlite*' \
            -cf - . | tar -C "$work" -xf -
        target=$work
    fi
    say "installing $SOURCE into it (pip)" >&2
    if ! "$dir/bin/python" -m pip install --disable-pip-version-check --no-input -q "$target" >&2; then
        [ -z "$work" ] || rm -rf -- "$work"
        rm -rf -- "${dir:?}"
        die "pip install failed; nothing was changed"
    fi
    [ -z "$work" ] || rm -rf -- "$work"
    printf '%s\n' "$stamp"
}

install_files() {
    # Documentation= in the unit points here; the example shows the keys of this version.
    [ ! -f "$REPO_DIR/README.md" ] || install_if_changed "$REPO_DIR/README.md" "$OPT/README.md" 0644 || true
    install_if_changed "$REPO_DIR/deploy/edge.toml.example" "$OPT/edge.toml.example" 0644 || true
    [ ! -f "$SCRIPT_DIR/edge.d/README.md" ] || install_if_changed "$SCRIPT_DIR/edge.d/README.md" "$DROPINS/README.md" 0644 || true

    if [ -e "$CONFIG" ]; then
        say "keeping $CONFIG"
    else
        install -m 0640 "$REPO_DIR/deploy/edge.toml.example" "$CONFIG"
        give_to_group "$CONFIG"
        say "created $CONFIG from the example: edit it (or add edge.d/*.toml drop-ins), then restart"
    fi

    if [ ! -e "$DEFAULTS" ]; then
        umask_was=$(umask); umask 022
        cat >"$DEFAULTS" <<'EOF'
# Environment of lorawan-edge.service (EnvironmentFile=), read by systemd at each start.
# `edge` commands run by hand do not read it: `set -a; . /etc/default/lorawan-edge; set +a` first.
#
# Overrides of /etc/lorawan-edge/edge.toml and edge.d/*.toml: EDGE__<SECTION>__<KEY>=value, with
# an upstream addressed by its name ('-' written '_'). A value is read as TOML when it parses
# (1024, true, ["a", "b"]), else as text. Secrets go in files (password_file), never here.
#
#EDGE__EDGE__ID=gw-sundsvall-07
#EDGE__CHIRPSTACK__MQTT_URL=mqtt://127.0.0.1:1883
#EDGE__UPSTREAM__CITY__URL=mqtts://mqtt.example.org:8883
EOF
        umask "$umask_was"
        say "created $DEFAULTS"
    fi

    if install_if_changed "$REPO_DIR/systemd/$NAME.service" "$UNIT" 0644; then
        say "installed $UNIT"
        UNIT_CHANGED=1
    fi
}

systemd_install() {
    can_systemctl || return 0
    if [ -n "$PREFIX" ]; then
        systemctl --root="$PREFIX" enable "$NAME.service" >/dev/null 2>&1 || say "could not enable the unit in $PREFIX"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable "$NAME.service"
    if systemctl is-active -q "$NAME.service"; then
        [ "$UNIT_CHANGED" -eq 0 ] || say "the unit changed: systemctl restart $NAME to apply it"
    else
        systemctl start "$NAME.service"
    fi
}

systemd_restart() {
    can_systemctl || return 0
    [ -z "$PREFIX" ] || return 0
    systemctl daemon-reload
    if systemctl is-enabled -q "$NAME.service"; then
        say "restarting $NAME (buffer schema migrations run at start)"
        systemctl restart "$NAME.service"
    else
        say "$NAME is not enabled: not started"
    fi
}

# -- main ------------------------------------------------------------------------------------------

UNIT_CHANGED=0
case $MODE in
    install|upgrade)
        ensure_python
        ensure_node_buffer
        ensure_user
        ensure_dirs
        install_files
        current=$(current_venv)
        if [ "$MODE" = install ] && [ -n "$current" ] && venv_ok "$current"; then
            say "already installed ($("$VENV/bin/edge" --version)); --upgrade reinstalls"
            validate_with "$VENV" || die "the configuration ($CONFIG, $DROPINS, $DEFAULTS) does not validate"
        else
            stamp=$(build_venv)
            # The new version must accept the current configuration before it replaces the old one.
            if ! validate_with "$OPT/venvs/$stamp"; then
                rm -rf -- "${OPT:?}/venvs/$stamp"
                die "the configuration ($CONFIG, $DROPINS, $DEFAULTS) does not validate with the new" \
                    "version: nothing was replaced"
            fi
            switch_venv "$stamp"
            prune_venvs
            say "installed $("$VENV/bin/edge" --version) in $VENV -> venvs/$stamp"
        fi
        if [ "$MODE" = upgrade ]; then systemd_restart; else systemd_install; fi
        ;;
    rollback)
        [ -n "$(current_venv)" ] || die "nothing installed under $OPT"
        prev=$(previous_venv)
        [ -n "$prev" ] || die "no previous venv under $OPT/venvs to roll back to"
        validate_with "$OPT/venvs/$prev" || die "the configuration does not validate with the previous version"
        switch_venv "$prev"
        say "rolled back to $("$VENV/bin/edge" --version) (venvs/$prev). A buffer already migrated to a newer" \
            "schema is refused by an older version: see deploy/fleet.md"
        systemd_restart
        ;;
esac
