#!/bin/sh
# Install what the integration tests run against: real Postfix and Dovecot (the Office 365 stand-in,
# see tests/support/upstream.py), plus the real clients the tests drive (swaks, mbsync, curl) and
# HAProxy, which the PROXY protocol tests put in front of relay365.
#
# For a fresh Debian 12 machine or CI container; idempotent and non-interactive. No system mail
# daemon is left running: the tests start private instances on 127.0.0.1 high ports.
#
#   scripts/install-test-deps.sh          # as root, or with sudo available
#   INSTALL_TEST_DEPS_FORCE=1 scripts/install-test-deps.sh   # run apt even if all is present
set -eu

PACKAGES="postfix dovecot-imapd dovecot-lmtpd dovecot-pop3d fetchmail getmail6 swaks isync curl ca-certificates libnet-ssleay-perl haproxy
systemd libseccomp2 prometheus chromium chromium-driver"
# libnet-ssleay-perl: swaks' STARTTLS support; only a Recommends of swaks, so name it.
# systemd (systemd-analyze verify/security), libseccomp2 (the unit's syscall filter around a real
# relay) and prometheus (promtool checks contrib/'s alert rules): tests/test_packaging.py.
# chromium + chromium-driver: the status page in a real browser (selenium), test_status_page.py.

# What the tests execute; if all of it is present, apt is not touched at all.
REQUIRED="/usr/sbin/postfix /usr/sbin/postconf /usr/sbin/postsuper /usr/lib/postfix/sbin/master
/usr/sbin/dovecot /usr/bin/doveadm /usr/lib/dovecot/imap /usr/lib/dovecot/imap-login
/usr/lib/dovecot/lmtp /usr/lib/dovecot/pop3 /usr/lib/dovecot/pop3-login
/usr/bin/fetchmail /usr/bin/getmail /usr/lib/dovecot/auth /usr/bin/swaks /usr/bin/mbsync /usr/bin/curl
/usr/sbin/haproxy /usr/bin/systemd-analyze /usr/bin/promtool /usr/bin/chromium /usr/bin/chromedriver"

what=
log() { printf 'install-test-deps: %s\n' "$*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=
elif command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
else
    log "must run as root (or with sudo)"; exit 1
fi

missing() {
    for f in $REQUIRED; do [ -x "$f" ] || { echo "$f"; return 0; }; done
    perl -MNet::SSLeay -e1 2>/dev/null || { echo "perl Net::SSLeay"; return 0; }
    for u in postfix dovecot dovenull mail; do
        getent passwd "$u" >/dev/null || { echo "user $u"; return 0; }
    done
    getent group postdrop >/dev/null || { echo "group postdrop"; return 0; }
    return 1
}

# Stop a system instance that a package's maintainer script may have started anyway
# (policy-rc.d covers invoke-rc.d only). Only the default /etc configs are touched, never the
# private instances of the test harness.
stop_system_daemons() {
    if [ -f /etc/postfix/main.cf ] && $SUDO postfix status >/dev/null 2>&1; then
        log "stopping system postfix"; $SUDO postfix stop >/dev/null 2>&1 || true
    fi
    if [ -r /run/dovecot/master.pid ] && $SUDO kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then
        log "stopping system dovecot"; $SUDO dovecot stop >/dev/null 2>&1 || true
    fi
    if [ -r /run/haproxy.pid ] && $SUDO kill -0 "$(cat /run/haproxy.pid)" 2>/dev/null; then
        log "stopping system haproxy"; $SUDO kill "$(cat /run/haproxy.pid)" 2>/dev/null || true
    fi
}

if [ -n "${INSTALL_TEST_DEPS_FORCE:-}" ] || what=$(missing); then
    log "missing: ${what:-nothing (forced)} - installing: $PACKAGES"
    POLICY=/usr/sbin/policy-rc.d
    BACKUP=
    if [ -e "$POLICY" ]; then
        BACKUP=$(mktemp /tmp/policy-rc.d.XXXXXX)
        $SUDO cp -p "$POLICY" "$BACKUP"
    fi
    restore_policy() {
        if [ -n "$BACKUP" ]; then
            $SUDO cp -p "$BACKUP" "$POLICY" && $SUDO rm -f "$BACKUP"
        else
            $SUDO rm -f "$POLICY"
        fi
    }
    trap restore_policy EXIT
    trap 'exit 130' INT TERM
    # exit 101 = "action forbidden": invoke-rc.d starts no daemon during the install
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod 0755 "$POLICY"

    # "No configuration": Postfix installs without asking and without writing a main.cf
    printf '%s\n' \
        "postfix postfix/main_mailer_type select No configuration" \
        "postfix postfix/mailname string localhost" | $SUDO debconf-set-selections

    export DEBIAN_FRONTEND=noninteractive
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
    # --no-upgrade: make packages present, never upgrade what a machine already has
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $PACKAGES
    restore_policy
    trap - EXIT INT TERM

    if what=$(missing); then
        log "still missing after install: $what"; exit 1
    fi
else
    log "all present, apt not needed"
fi

stop_system_daemons
log "ok: $(/usr/sbin/postconf -d -h mail_version 2>/dev/null | sed 's/^/postfix /') dovecot $(/usr/sbin/dovecot --version)"
