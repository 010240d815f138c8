"""Speed and memory of the cleanup, disk-check and command helpers (not a test).

Run: /opt/unitgen/bin/python bench/bench_cleanup.py [--files 20000] [--dirs 200]

Builds a tree of small old files in a temp dir, then times, each on a fresh copy:
remove_old_files (dry run and real), free_space until half the files are gone,
shutil.rmtree as the no-checks baseline (unlink cost of this filesystem),
check_disk, memory_status, and run_command(["true"]). Peak Python memory comes
from tracemalloc (so it excludes the interpreter itself).

Then the cost of the mount-point check (one mount-id lookup per file and
directory walked, per directory fd opened, and per removal): the same dry
runs and real runs with the lookup stubbed out ("no check", what the walk
cost before it had one) and with each way handlers.mounts can ask, alternated
over --rounds rounds; medians and ratios to "no check".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from handlers import cleanup, mounts
from handlers.cleanup import free_space, remove_old_files
from handlers.procs import run_command
from handlers.resources import Threshold, check_disk, memory_status

OLD = 1_000_000_000.0


def build(root: Path, files: int, dirs: int) -> None:
    for d in range(dirs):
        (root / f"d{d:04d}").mkdir(parents=True)
    for i in range(files):
        p = root / f"d{i % dirs:04d}" / f"f{i:06d}.log"
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"x" * 100)
        os.utime(fd, (OLD + i, OLD + i))
        os.close(fd)


def measure(label: str, fn: Callable[[], object], *, memory: bool = False) -> None:
    """Time ``fn``; with ``memory``, run it again under tracemalloc (it must be repeatable)."""
    started = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - started
    line = f"{label:<48} {elapsed * 1000:9.1f} ms"
    if memory:
        tracemalloc.start()
        fn()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        line += f"   peak {peak / 1024:7.0f} KiB"
    print(line)


def report(label: str, value: float, unit: str) -> None:
    print(f"{label:<48} {value:9.1f} {unit}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--dirs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n: int = args.files
    with tempfile.TemporaryDirectory(prefix="bench-cleanup-") as tmp:
        base = Path(tmp)
        print(f"tree: {n} files of 100 B in {args.dirs} directories under {base}")

        build(base / "a", n, args.dirs)
        measure(
            f"remove_old_files dry run ({n} files)",
            lambda: remove_old_files(str(base / "a"), older_than=60, dry_run=True),
            memory=True,
        )
        measure(
            f"free_space dry run ({n} files)",
            lambda: free_space([str(base / "a")], enough=lambda: False, dry_run=True),
            memory=True,
        )
        measure(
            f"remove_old_files ({n} files + dirs)",
            lambda: remove_old_files(str(base / "a"), older_than=60),
        )

        build(base / "b", n, args.dirs)
        target = n // 2
        removed = [0]

        def enough() -> bool:
            removed[0] += 1  # counts calls: one before, then one per removal
            return removed[0] > target

        measure(
            f"free_space ({target} of {n} files, check each)",
            lambda: free_space([str(base / "b")], enough=enough),
        )

        # Baseline: the kernel's own unlink cost on this filesystem, with no checks at all.
        build(base / "c", n, args.dirs)
        measure(f"baseline: shutil.rmtree ({n} files)", lambda: shutil.rmtree(base / "c"))

        paths = [str(base), "/", "/tmp", str(base / "missing" / "dir")]
        t = Threshold.parse("5%")
        samples = []
        for _ in range(200):
            s = time.perf_counter()
            check_disk(paths, min_free=t, min_free_inodes=t)
            samples.append(time.perf_counter() - s)
        report("check_disk (4 paths), median of 200", statistics.median(samples) * 1e6, "us")
        samples = []
        for _ in range(200):
            s = time.perf_counter()
            memory_status(t)
            samples.append(time.perf_counter() - s)
        report("memory_status, median of 200", statistics.median(samples) * 1e6, "us")

        async def spawn() -> list[float]:
            out = []
            for _ in range(50):
                s = time.perf_counter()
                await run_command(["true"], timeout=10)
                out.append(time.perf_counter() - s)
            return out

        spawn_samples = asyncio.run(spawn())
        report("run_command([true]), median of 50", statistics.median(spawn_samples) * 1000, "ms")

        mount_check_cost(base, n, args.dirs, args.rounds)


def _no_check(_fd: int, _name: str | None = None) -> int:
    return 0  # every entry "on the root's mount", without asking the kernel


MOUNT_ID_VARIANTS: dict[str, Callable[[int, str | None], int]] = {
    "no check": _no_check,
    "statx": mounts.statx_mount_id,
    "name_to_handle_at": mounts.handle_mount_id,
    "fdinfo": mounts.fdinfo_mount_id,
}


def mount_check_cost(base: Path, n: int, dirs: int, rounds: int) -> None:
    """Dry and real runs per mount-id variant, alternated round by round in this process."""
    print(
        f"\nmount-point check: {rounds} rounds, variants alternated; default is {mounts.method()}"
    )
    build(base / "m", n, dirs)
    original = cleanup.mount_id
    dry: dict[str, list[float]] = {v: [] for v in MOUNT_ID_VARIANTS}
    real: dict[str, list[float]] = {v: [] for v in ("no check", "statx")}
    try:
        for r in range(rounds):
            order = list(MOUNT_ID_VARIANTS) if r % 2 == 0 else list(reversed(MOUNT_ID_VARIANTS))
            for variant in order:
                cleanup.mount_id = MOUNT_ID_VARIANTS[variant]
                started = time.perf_counter()
                remove_old_files(str(base / "m"), older_than=60, dry_run=True)
                dry[variant].append(time.perf_counter() - started)
            for variant in real if r % 2 == 0 else reversed(list(real)):
                tree = base / f"r{r}-{variant.replace(' ', '-')}"
                build(tree, n, dirs)
                cleanup.mount_id = MOUNT_ID_VARIANTS[variant]
                started = time.perf_counter()
                remove_old_files(str(tree), older_than=60)
                real[variant].append(time.perf_counter() - started)
    finally:
        cleanup.mount_id = original
    for label, table in ((f"dry run, {n} files", dry), (f"real run, {n} files + dirs", real)):
        base_ms = statistics.median(table["no check"]) * 1000
        for variant, samples in table.items():
            ms = statistics.median(samples) * 1000
            what = f"remove_old_files {label}, {variant}"
            print(f"  {what:<62} {ms:9.1f} ms  x{ms / base_ms:.2f}")


if __name__ == "__main__":
    main()
