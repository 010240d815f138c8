# PID 1 of a user-scope sandbox's PID and mount namespace (run by `unshare`).
# Arguments: ROOT ID JOURNAL SYSTEMD JOURNALD SHARED...; the cgroup hierarchies to
# join come in $UNITGEN_SANDBOX_CGROUPS (space-separated). docs/sandbox.md says
# why each step is here.
set -eu
R=$1; ID=$2; JOURNAL=$3; SYSTEMD=$4; JOURNALD=$5; shift 5
for h in $UNITGEN_SANDBOX_CGROUPS; do
    mkdir -p "$h/$ID/init.scope"
    echo 0 > "$h/$ID/init.scope/cgroup.procs"
done
# A fresh /run: the runtime dir must live where a real one does (/run/user/UID),
# because under /tmp a PrivateTmp= unit could not reach the notify socket; and the
# host's /run (its system bus included) is none of the sandbox's business.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/systemd/system /run/systemd/journal /run/log /run/lock /run/user/0 /run/.keep
mount --bind "$R/run" /run/user/0
if [ -d "$R/inaccessible" ]; then
    mkdir /run/systemd/inaccessible
    mount --bind "$R/inaccessible" /run/systemd/inaccessible
fi
# HOME under /home, as on a real host, so ProtectHome= means what it will mean there.
mount -t tmpfs -o mode=755 tmpfs /home
mkdir /home/sandbox
mount --bind "$R/home" /home/sandbox
# Keep the root and the shared paths reachable across the /tmp and /var/tmp binds.
i=0
for p in "$R" "$@"; do
    mkdir -p /run/.keep/$i
    mount --bind "$p" /run/.keep/$i
    i=$((i+1))
done
mount --bind /run/.keep/0/tmp /tmp
mount --bind /run/.keep/0/var-tmp /var/tmp
i=0
for p in "$R" "$@"; do
    mkdir -p "$p"
    mount --bind /run/.keep/$i "$p"
    umount /run/.keep/$i
    i=$((i+1))
done
rmdir /run/.keep/* /run/.keep
if [ "$JOURNAL" = 1 ]; then
    if [ -d /var/log/journal ]; then mount -t tmpfs -o mode=755 tmpfs /var/log/journal; fi
    "$JOURNALD" </dev/null >/dev/null 2>&1 &
    # The manager opens its log target once; without the socket it would log to
    # the host's /dev/kmsg.
    n=0
    while [ ! -S /run/systemd/journal/socket ] && [ $n -lt 500 ]; do sleep 0.005; n=$((n+1)); done
    export SYSTEMD_LOG_TARGET=journal
else
    export SYSTEMD_LOG_TARGET=console
fi
"$SYSTEMD" --user </dev/null &
wait
