#!/usr/bin/env bash
# unitgen installer. Idempotent: running it twice changes nothing the second time.
#
#   ./install.sh                      venv in /opt/unitgen + companion files for the system manager
#   ./install.sh --user               ... for the calling user's manager (systemctl --user)
#   ./install.sh --spec FILE          also render FILE and install, enable and start its units
#   ./install.sh --prefix DIR         venv somewhere else (default /opt/unitgen)
#   ./install.sh --dest DIR           stage everything under DIR (packaging); touches no manager
#   ./install.sh --uninstall          remove what an earlier run installed (keeps state/history)
#   ./install.sh --dev                dev/CI set-up: editable .[dev,fast] and the OS packages the
#                                     tests need; installs no units (the tests bring their own systemd)
#   ./install.sh --demo               the main job: real systemd sandbox, demo spec, scores
#   ./install.sh --check              only report what is missing, install nothing
#   ./install.sh --no-apt             never call apt-get; say what is missing instead
#
# Environment: PYTHON (interpreter for the venv, default python3), PIP_* (passed to pip,
# e.g. PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR for offline installs).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PREFIX=/opt/unitgen
SCOPE=system
DEST=""
SPEC=""
ACTION=install
DEV=0
APT=1
PYTHON="${PYTHON:-python3}"

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift ;;
        --prefix=*) PREFIX="${1#*=}" ;;
        --dest) DEST="${2:?--dest needs a directory}"; shift ;;
        --dest=*) DEST="${1#*=}" ;;
        --spec) SPEC="${2:?--spec needs a file}"; shift ;;
        --spec=*) SPEC="${1#*=}" ;;
        --user) SCOPE=user ;;
        --uninstall) ACTION=uninstall ;;
        --dev) DEV=1 ;;
        --demo) ACTION=demo ;;
        --check) ACTION=check ;;
        --no-apt) APT=0 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
# These paths end up inside unit files (and sed expressions): keep them plain.
plain_path() { [[ "$1" =~ ^/[A-Za-z0-9._/@+-]*$ ]] && [[ "$1" != *..* ]] && [ "$1" != / ]; }
plain_path "$PREFIX" || { echo "install.sh: --prefix must be a plain absolute path: $PREFIX" >&2; exit 2; }
if [ -n "$DEST" ]; then
    case "$DEST" in /*) ;; *) echo "install.sh: --dest must be absolute: $DEST" >&2; exit 2 ;; esac
fi
if [ -n "$SPEC" ]; then
    [ -f "$SPEC" ] || { echo "install.sh: --spec: no such file: $SPEC" >&2; exit 2; }
    SPEC="$(cd "$(dirname "$SPEC")" && pwd)/$(basename "$SPEC")"
fi

# --- where things go ------------------------------------------------------------------------

SYSTEMCTL=(systemctl)
if [ "$SCOPE" = user ]; then
    SYSTEMCTL=(systemctl --user)
    CONFIG_HOME="${XDG_CONFIG_HOME:-$HOME/.config}"
    UNIT_DIR="$CONFIG_HOME/systemd/user"
    POLICY_DIR="${UNITGEN_POLICY_DIR:-$CONFIG_HOME/unitgen/policy.d}"
    DBUS_DIR=""  # the session bus needs no policy file
else
    UNIT_DIR=/etc/systemd/system
    POLICY_DIR="${UNITGEN_POLICY_DIR:-/etc/unitgen/policy.d}"
    # /etc, not /usr/share: this is a local install, and /usr may be read-only.
    DBUS_DIR=/etc/dbus-1/system.d
fi
plain_path "$POLICY_DIR" || die "policy dir must be a plain absolute path: $POLICY_DIR"
# The journal message catalog (journalctl -x). systemd reads catalogs only from
# /usr/lib/systemd/catalog (the distro package's place) and /usr/local/lib/systemd/catalog
# (the admin's, for software installed without a package), never from /etc.
CATALOG_DIR="${UNITGEN_CATALOG_DIR:-/usr/local/lib/systemd/catalog}"
plain_path "$CATALOG_DIR" || die "catalog dir must be a plain absolute path: $CATALOG_DIR"
MANIFEST_DIR="$PREFIX/share/unitgen"
MANIFEST="$MANIFEST_DIR/installed-files"

# --- what we need ---------------------------------------------------------------------------

# command -> Debian package that provides it
declare -A PKG_OF=(
    [systemctl]=systemd [dbus-daemon]=dbus [busctl]=systemd
)
declare -A DEV_PKG_OF=(
    [systemd-nspawn]=systemd-container [redis-server]=redis-server [nginx]=nginx-light
    [unshare]=util-linux [nsenter]=util-linux [setpriv]=util-linux [journalctl]=systemd
    [git]=git
    # the generated man pages are checked with groff's warnings on
    [groff]=groff-base [man]=man-db
    # the alert tests: a throw-away TLS certificate, and a real Alertmanager to resolve against
    [openssl]=openssl [prometheus-alertmanager]=prometheus-alertmanager
)

# file -> Debian package, for what is not a command: the user manager's session bus.
declare -A DEV_FILE_PKG=(
    [/usr/lib/systemd/user/dbus.socket]=dbus-user-session
)
# --dev only: the Debian package's dependencies, for the test that installs it in a container.
declare -A DEV_DEB_PKG=(
    [/usr/lib/python3/dist-packages/dbus_next]=python3-dbus-next
    [/usr/lib/python3/dist-packages/jinja2]=python3-jinja2
    [/usr/lib/python3/dist-packages/requests]=python3-requests
)

missing_files() {
    local -n files=$1
    local f
    for f in "${!files[@]}"; do
        [ -e "$f" ] || echo "${files[$f]}"
    done
}

python_ok() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

venv_ok() {
    # ensurepip is what Debian splits out into python3-venv
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null
}

missing_packages() {
    local -n table=$1
    local cmd
    for cmd in "${!table[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || echo "${table[$cmd]}"
    done
}

need_packages() {
    local pkgs=()
    mapfile -t pkgs < <(
        {
            missing_packages PKG_OF
            if [ "$DEV" = 1 ] || [ "$ACTION" = demo ]; then
                missing_packages DEV_PKG_OF
                missing_files DEV_FILE_PKG
                if [ "$DEV" = 1 ]; then missing_files DEV_DEB_PKG; fi
            elif [ "$SCOPE" = user ]; then
                missing_files DEV_FILE_PKG
            fi
            if ! python_ok; then
                echo python3; echo python3-venv
            elif [ ! -x "$DEST$PREFIX/bin/python" ] && ! venv_ok; then
                echo python3-venv
            fi
        } | sort -u
    )
    printf '%s\n' "${pkgs[@]}" | sed '/^$/d'
}

apt_install() {
    local pkgs=("$@")
    [ ${#pkgs[@]} -gt 0 ] || return 0
    if [ "$APT" = 0 ] || [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "install.sh: missing OS packages: ${pkgs[*]}" >&2
        echo "install.sh: install them with: apt-get install ${pkgs[*]}" >&2
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Update the lists only when some package has no install candidate yet.
    local pkg
    for pkg in "${pkgs[@]}"; do
        if ! apt-cache policy "$pkg" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
            say "apt-get update (no candidate for $pkg)"
            apt-get update -q
            break
        fi
    done
    say "apt-get install ${pkgs[*]}"
    # nginx and redis must not be started by their postinst on a machine without
    # systemd as PID 1 either; policy-rc.d says "not now" to invoke-rc.d.
    local rcd=/usr/sbin/policy-rc.d created_rcd=0
    if [ ! -e "$rcd" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$rcd"; chmod 755 "$rcd"; created_rcd=1
    fi
    local rc=0
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" || rc=$?
    [ "$created_rcd" = 1 ] && rm -f "$rcd"
    return $rc
}

check_requirements() {
    local pkgs=()
    mapfile -t pkgs < <(need_packages)
    if [ ${#pkgs[@]} -gt 0 ] && [ -n "${pkgs[0]}" ]; then
        if [ "$ACTION" = check ]; then
            echo "install.sh: missing OS packages: ${pkgs[*]}"
            return 1
        fi
        apt_install "${pkgs[@]}" || die "cannot continue without: ${pkgs[*]}"
        mapfile -t pkgs < <(need_packages)
        if [ ${#pkgs[@]} -gt 0 ] && [ -n "${pkgs[0]}" ]; then
            die "still missing after apt-get: ${pkgs[*]}"
        fi
    fi
    python_ok || die "$PYTHON is older than 3.11 (need python3 >= 3.11)"
    [ "$ACTION" = check ] && say "nothing missing"
    return 0
}

# --- install --------------------------------------------------------------------------------

record() {  # remember a file we installed, so --uninstall removes exactly these
    mkdir -p "$DEST$MANIFEST_DIR"
    touch "$DEST$MANIFEST"
    grep -qxF "$1" "$DEST$MANIFEST" || echo "$1" >> "$DEST$MANIFEST"
}

put() {  # put SRC DEST-PATH MODE: copy only when different; prints what changed
    local src=$1 target=$2 mode=$3
    mkdir -p "$(dirname "$DEST$target")"
    if [ -f "$DEST$target" ] && cmp -s "$src" "$DEST$target"; then
        record "$target"
        return 1
    fi
    install -m "$mode" "$src" "$DEST$target.unitgen-new"
    mv -f "$DEST$target.unitgen-new" "$DEST$target"
    say "installed $target"
    record "$target"
    return 0
}

install_venv() {
    local venv="$DEST$PREFIX" extras="" stamp
    [ "$DEV" = 1 ] && extras="[dev,fast]"
    if [ ! -x "$venv/bin/python" ]; then
        say "creating venv $PREFIX"
        "$PYTHON" -m venv "$venv"
        touch "$venv/.created-by-unitgen-install"
    fi
    # Reinstall only when the source or the extras changed: pip is the slow part.
    stamp="$(cd "$REPO" && { cat pyproject.toml; find unitgen handlers units -type f \
        \( -name '*.py' -o -name '*.j2' -o -name '*.conf' -o -name '*.xml' -o -name '*.toml' \) \
        -print0 2>/dev/null | sort -z | xargs -0 cat; echo "$extras"; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$venv/.unitgen-stamp" ] && [ "$(cat "$venv/.unitgen-stamp")" = "$stamp" ] \
        && "$venv/bin/python" -I -c 'import unitgen' 2>/dev/null; then
        return 0
    fi
    # An editable install of this very work tree (a --dev venv) already runs the
    # current code: never replace it with a copy.
    local where
    where="$("$venv/bin/python" -I -c 'import unitgen, os; print(os.path.dirname(os.path.dirname(os.path.realpath(unitgen.__file__))))' 2>/dev/null || true)"
    if [ "$DEV" = 0 ] && [ "$where" = "$REPO" ]; then
        return 0
    fi
    say "installing unitgen$extras into $PREFIX"
    if [ "$DEV" = 1 ]; then
        # Editable: the tests import the work tree, and CI runs them from the clone.
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO$extras"
    else
        # Build from a copy: setuptools builds in-tree (build/, *.egg-info), and two
        # installs from one work tree at once would trip over each other.
        local src
        src="$(mktemp -d)"
        (cd "$REPO" && tar -cf - --exclude=__pycache__ --exclude='*.egg-info' \
            pyproject.toml README.md unitgen handlers units) | tar -xf - -C "$src"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "$src" \
            || { rm -rf "$src"; die "pip could not install unitgen into $PREFIX"; }
        rm -rf "$src"
    fi
    echo "$stamp" > "$venv/.unitgen-stamp"
}

companion_specs() {  # specs under units/ describe unitgen's own units (e.g. the listener)
    local f
    for f in "$REPO"/units/*.toml; do [ -f "$f" ] && echo "$f"; done
    [ -n "$SPEC" ] && echo "$SPEC"
    return 0
}

has_manager() {
    [ -z "$DEST" ] && "${SYSTEMCTL[@]}" show -P Version >/dev/null 2>&1
}

install_units() {
    local stage spec f rel changed=0 units=()
    stage="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$stage'" RETURN
    local scope_flag=()
    [ "$SCOPE" = user ] && scope_flag=(--user)
    local n=0 copy
    while read -r spec; do
        [ -n "$spec" ] || continue
        # Companion specs name the installed binary as /usr/local/bin/unitgen; point
        # them at this venv's instead of writing outside PREFIX.
        # The copy lives in PREFIX so the rendered header names a stable, existing file.
        n=$((n + 1)); copy="$MANIFEST_DIR/specs/$n-$(basename "$spec")"
        mkdir -p "$DEST$MANIFEST_DIR/specs"
        sed "s|\"/usr/local/bin/unitgen\"|\"$PREFIX/bin/unitgen\"|g" "$spec" > "$DEST$copy"
        record "$copy"
        copy="$DEST$copy"
        "$DEST$PREFIX/bin/unitgen" render "$copy" "${scope_flag[@]}" --out "$stage/units" \
            --policy-dir "$stage/policy" --unitgen-bin "$PREFIX/bin/unitgen" >/dev/null
    done < <(companion_specs)
    # Policies are rendered into the stage, but units must name their final home.
    if [ -d "$stage/units" ]; then
        find "$stage/units" -type f -exec sed -i "s|$stage/policy|$POLICY_DIR|g" {} +
    fi
    if [ -d "$stage/units" ]; then
        while IFS= read -r -d '' f; do
            rel="${f#"$stage/units/"}"
            if put "$f" "$UNIT_DIR/$rel" 0644; then changed=1; fi
            case "$rel" in */*|*@.*) ;; *) units+=("$rel") ;; esac
        done < <(find "$stage/units" -type f -print0 | sort -z)
    fi
    if [ -d "$stage/policy" ]; then
        while IFS= read -r -d '' f; do
            # Policies are rendered for the final policy dir; --dest only relocates them.
            put "$f" "$POLICY_DIR/${f#"$stage/policy/"}" 0644 || true
        done < <(find "$stage/policy" -type f -print0 | sort -z)
    fi
    if [ -n "$DBUS_DIR" ]; then
        for f in "$REPO"/units/*.conf; do
            [ -f "$f" ] || continue
            if put "$f" "$DBUS_DIR/$(basename "$f")" 0644; then
                has_manager && { busctl call org.freedesktop.DBus /org/freedesktop/DBus \
                    org.freedesktop.DBus ReloadConfig >/dev/null 2>&1 || true; }
            fi
        done
    fi
    install_catalog
    # Enable (and start) the plain units that have an [Install] section.
    local enable=()
    for f in "${units[@]}"; do
        grep -q '^\[Install\]' "$DEST$UNIT_DIR/$f" && enable+=("$f")
    done
    if [ -n "$DEST" ]; then
        if [ ${#enable[@]} -gt 0 ]; then
            "${SYSTEMCTL[@]}" --root="$DEST" enable "${enable[@]}" >/dev/null 2>&1 \
                || "${SYSTEMCTL[@]/--user/--global}" --root="$DEST" enable "${enable[@]}" >/dev/null
        fi
        return 0
    fi
    if has_manager; then
        [ "$changed" = 1 ] && "${SYSTEMCTL[@]}" daemon-reload
        if [ ${#enable[@]} -gt 0 ]; then
            "${SYSTEMCTL[@]}" enable --quiet "${enable[@]}"
            if ! "${SYSTEMCTL[@]}" start "${enable[@]}"; then
                local failed=()
                for f in "${enable[@]}"; do
                    "${SYSTEMCTL[@]}" is-active --quiet "$f" || failed+=("$f")
                done
                "${SYSTEMCTL[@]}" --no-pager status "${failed[@]}" >&2 || true
                die "did not start: ${failed[*]}"
            fi
        fi
    else
        say "no $SCOPE manager reachable: units are installed but not enabled or started"
    fi
}

install_catalog() {  # system scope only: the catalog database is the system's
    local f="$REPO/units/unitgen.catalog"
    [ "$SCOPE" = system ] && [ -f "$f" ] || return 0
    if ! mkdir -p "$DEST$CATALOG_DIR" 2>/dev/null || [ ! -w "$DEST$CATALOG_DIR" ]; then
        say "$CATALOG_DIR is not writable: journal catalog not installed (journalctl -x)"
        return 0
    fi
    if put "$f" "$CATALOG_DIR/unitgen.catalog" 0644 && [ -z "$DEST" ]; then
        journalctl --update-catalog || say "journalctl --update-catalog failed"
    fi
    return 0
}

do_install() {
    check_requirements
    install_venv
    # --dev sets up a development/CI machine: the tests bring their own systemd, so
    # nothing goes into the host's unit directories unless a spec is asked for.
    if [ "$DEV" = 1 ] && [ -z "$SPEC" ]; then
        say "done: unitgen[dev,fast] in $PREFIX (--dev installs no units)"
        return 0
    fi
    install_units
    say "done: unitgen in $PREFIX, units in $DEST$UNIT_DIR"
}

# --- uninstall ------------------------------------------------------------------------------

do_uninstall() {
    local f units=()
    if [ -f "$DEST$MANIFEST" ]; then
        while IFS= read -r f; do
            case "$f" in "$UNIT_DIR"/*) units+=("${f#"$UNIT_DIR/"}") ;; esac
        done < "$DEST$MANIFEST"
        local plain=()
        for f in "${units[@]}"; do case "$f" in */*|*@.*) ;; *) plain+=("$f") ;; esac; done
        if [ ${#plain[@]} -gt 0 ]; then
            if [ -n "$DEST" ]; then
                "${SYSTEMCTL[@]}" --root="$DEST" disable "${plain[@]}" >/dev/null 2>&1 || true
            elif has_manager; then
                "${SYSTEMCTL[@]}" disable --now --quiet "${plain[@]}" 2>/dev/null || true
            fi
        fi
        local catalog=0
        while IFS= read -r f; do
            [ -n "$f" ] || continue
            if [ -e "$DEST$f" ] || [ -L "$DEST$f" ]; then
                rm -f "$DEST$f"; say "removed $f"
                case "$f" in *.catalog) catalog=1 ;; esac
                # Only directories install.sh itself makes: drop-in dirs and specs/.
                case "$(dirname "$f")" in
                    "$UNIT_DIR"/*.d|"$MANIFEST_DIR"/specs) rmdir "$(dirname "$DEST$f")" 2>/dev/null || true ;;
                esac
            fi
        done < "$DEST$MANIFEST"
        has_manager && "${SYSTEMCTL[@]}" daemon-reload || true
        if [ "$catalog" = 1 ] && [ -z "$DEST" ]; then
            journalctl --update-catalog || say "journalctl --update-catalog failed"
        fi
    fi
    if [ -f "$DEST$PREFIX/.created-by-unitgen-install" ]; then
        rm -rf "$DEST$PREFIX"
        say "removed $PREFIX"
    elif [ -d "$DEST$PREFIX" ]; then
        rm -rf "$DEST$MANIFEST_DIR"
        say "kept $PREFIX (not created by install.sh)"
    fi
    say "uninstalled (state and history, if any, are kept)"
}

# --- demo -----------------------------------------------------------------------------------

do_demo() {
    check_requirements
    install_venv
    exec "$DEST$PREFIX/bin/python" "$REPO/examples/demo.py" --prefix "$PREFIX" --repo "$REPO"
}

case "$ACTION" in
    install) do_install ;;
    uninstall) do_uninstall ;;
    check) check_requirements ;;
    demo) do_demo ;;
esac
