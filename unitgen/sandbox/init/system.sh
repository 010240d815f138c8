# The system-scope wrapper, run by `unshare --mount`: join the private cgroup
# (nspawn --keep-unit creates payload/ and supervisor/ below its own cgroup,
# which would otherwise be the host's), hide the host's /run/systemd (nspawn
# leaves nspawn/locks and nspawn/propagate there), then become nspawn.
# Arguments: ID NSPAWN-ARGV...; hierarchies in $UNITGEN_SANDBOX_CGROUPS.
set -eu
ID=$1; shift
for h in $UNITGEN_SANDBOX_CGROUPS; do
    mkdir -p "$h/$ID"
    echo 0 > "$h/$ID/cgroup.procs"
done
mount -t tmpfs -o mode=755 tmpfs /run/systemd
exec "$@"
