#!/bin/sh
# Removes lorawan-edge: stops and disables the unit, removes it and the venvs under /opt.
# Keeps /etc/lorawan-edge, /etc/default/lorawan-edge, /var/lib/lorawan-edge (the buffer) and the
# user, so a later install.sh picks up where this one stopped; --purge removes those too.
set -eu

NAME=lorawan-edge
PREFIX=""
SYSTEMD=1
PURGE=0

say() { printf '%s: %s\n' "$NAME" "$*"; }
die() { printf '%s: error: %s\n' "$NAME" "$*" >&2; exit 1; }

usage() {
    cat <<USAGE
Usage: $0 [--purge] [--prefix DIR] [--no-systemd]

  --purge        also remove the configuration, the environment file, the buffer
                 (every reading not yet delivered) and the $NAME user
  --prefix DIR   the root install.sh --prefix installed into
  --no-systemd   never call systemctl
USAGE
}

while [ $# -gt 0 ]; do
    case $1 in
        --purge) PURGE=1 ;;
        --prefix) [ $# -ge 2 ] || die "--prefix needs a directory"; PREFIX=$2; shift ;;
        --prefix=*) PREFIX=${1#*=} ;;
        --no-systemd) SYSTEMD=0 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

if [ -n "$PREFIX" ]; then
    [ -d "$PREFIX" ] || die "--prefix $PREFIX does not exist"
    PREFIX=$(CDPATH='' cd -- "$PREFIX" && pwd)
    [ "$PREFIX" = / ] && PREFIX=""
fi

OPT=$PREFIX/opt/$NAME
ETC=$PREFIX/etc/$NAME
DEFAULTS=$PREFIX/etc/default/$NAME
STATE=$PREFIX/var/lib/$NAME
UNIT=$PREFIX/etc/systemd/system/$NAME.service
UNIT_DROPINS=$PREFIX/etc/systemd/system/$NAME.service.d

systemctl_usable() {
    [ "$SYSTEMD" -eq 1 ] && command -v systemctl >/dev/null 2>&1 || return 1
    [ -n "$PREFIX" ] || [ -d /run/systemd/system ]
}

if systemctl_usable; then
    if [ -n "$PREFIX" ]; then
        systemctl --root="$PREFIX" disable "$NAME.service" >/dev/null 2>&1 || true
    elif [ -e "$UNIT" ]; then
        say "stopping and disabling $NAME"
        # SIGTERM: the service commits what is in flight and saves delivery progress first.
        systemctl disable --now "$NAME.service" || true
    fi
fi

rm -f -- "$UNIT"
rm -rf -- "${OPT:?}"
say "removed the unit and $OPT"

if [ "$PURGE" -eq 1 ]; then
    rm -rf -- "${ETC:?}" "${STATE:?}" "$UNIT_DROPINS"
    rm -f -- "$DEFAULTS"
    if [ -n "$PREFIX" ]; then
        if grep -q "^$NAME:" "$PREFIX/etc/passwd" 2>/dev/null; then userdel --root "$PREFIX" "$NAME" || true; fi
    elif getent passwd "$NAME" >/dev/null 2>&1; then
        userdel "$NAME" || true
    fi
    say "purged $ETC, $DEFAULTS, $STATE and the $NAME user"
else
    say "kept $ETC, $DEFAULTS and $STATE (the buffer); --purge removes them"
fi

if systemctl_usable && [ -z "$PREFIX" ]; then
    systemctl daemon-reload
    systemctl reset-failed "$NAME.service" >/dev/null 2>&1 || true
fi
