"""The inner script of the systemd sandbox: the recipe's mounts, their checks, the exec.

This text runs as PID 1 of the sandbox's fresh namespaces before systemd does. It makes the
mounts of REFERENCE.md section 3, then checks each one by looking at what is mounted (it does
not trust the mount commands) and refuses, with exit status REFUSED_EXIT, to exec systemd if
any is missing. See docs/testing-systemd.md for why each mount is there.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass
from pathlib import Path

CGROUP_UNIFIED = Path("/sys/fs/cgroup/unified")
SYSTEMD = "/lib/systemd/systemd"
BOOT_TARGET = "sandbox.target"
# Exit status the inner script uses for "a check failed, systemd not started".
REFUSED_EXIT = 97


class Mount(enum.StrEnum):
    """The mounts of the recipe (VAR_TMP is an addition to it), in the order they are made.

    Values name the mount in refusals and in the test-only `skip_mounts` parameter.
    """

    # Only with `overlay_system`: /etc, /usr and /var become overlays whose writes land in
    # the workdir, so a test may install a package (dpkg -i) without touching the host.
    OVERLAY = "overlay"
    RUN = "run"
    UNITS = "units"
    VENDOR_UNITS = "vendor-units"
    GENERATORS = "generators"
    CONSOLE = "console"
    CGROUP = "cgroup"
    VAR_TMP = "var-tmp"
    TMP = "tmp"


@dataclass(frozen=True)
class Layout:
    workdir: Path
    name: str
    # Host folders under /tmp that stay visible inside at the same path (a checkout or venv
    # living under /tmp); each is bound into the private /tmp.
    shares: tuple[Path, ...] = ()
    overlay_system: bool = False

    @property
    def units(self) -> Path:
        return self.workdir / "units"

    @property
    def tmp(self) -> Path:
        return self.workdir / "tmp"

    @property
    def var_tmp(self) -> Path:
        return self.workdir / "var-tmp"

    @property
    def console_log(self) -> Path:
        return self.workdir / "console.log"

    @property
    def launcher_log(self) -> Path:
        return self.workdir / "launcher.log"

    @property
    def marker(self) -> str:
        # Lives in the private /tmp: seen at /tmp/<marker> inside only if the bind worked.
        return f".olladist-sandbox-{self.name}"

    @property
    def cgroup(self) -> Path:
        return CGROUP_UNIFIED / self.name

    def overlay_upper(self, top: str) -> Path:
        """Host path of the folder that receives the writes to /TOP inside (overlay mode)."""
        return self.workdir / "overlay" / "upper" / top

    def overlay_work(self, top: str) -> Path:
        return self.workdir / "overlay" / "work" / top

    def share_mountpoint(self, share: Path) -> Path:
        """Host path, in the private tmp folder, where `share` is bound."""
        return self.tmp / share.relative_to("/tmp")


# The top folders dpkg writes to (the package's files, its database, users, logs). Each must
# be a folder of the root file system with nothing mounted below it: an overlay shows its
# lower folder's own contents, not mounts inside it.
OVERLAY_TOPS = ("etc", "usr", "var")

STUB_TARGETS = ("sysinit.target", "basic.target", "shutdown.target", "multi-user.target")


def stub_target(name: str) -> str:
    extra = ""
    if name == BOOT_TARGET:
        # Units a test enables (WantedBy=multi-user.target) before boot start with it.
        extra = "Wants=multi-user.target\nAfter=multi-user.target\n"
    return (
        "[Unit]\n"
        f"Description=olladist sandbox stub {name}\n"
        # Without this a target pulls in the host's sysinit chain, which is exactly what the
        # empty vendor folder is there to keep out.
        "DefaultDependencies=no\n"
        f"{extra}"
    )


def _mount_commands(layout: Layout, console: str) -> dict[Mount, str]:
    q = shlex.quote
    overlays = " && ".join(
        f"mount -t overlay overlay -o lowerdir=/{top},"
        f"upperdir={q(str(layout.overlay_upper(top)))},workdir={q(str(layout.overlay_work(top)))}"
        f" /{top}"
        for top in OVERLAY_TOPS
    )
    # Writable in overlay mode: the package's units are installed there. It is still checked
    # empty before systemd starts, so only what a test installs is ever loaded.
    vendor = "mode=0755" if layout.overlay_system else "ro,mode=0755"
    commands = {
        Mount.OVERLAY: overlays,
        Mount.RUN: "mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run && mkdir -p /run/lock",
        Mount.UNITS: f"mount --bind {q(str(layout.units))} /etc/systemd/system",
        Mount.VENDOR_UNITS: f"mount -t tmpfs -o {vendor} tmpfs /usr/lib/systemd/system",
        Mount.GENERATORS: (
            "mount -t tmpfs -o ro,mode=0755 tmpfs /usr/lib/systemd/system-generators"
        ),
        Mount.CONSOLE: f"mount --bind {q(console)} /dev/console",
        Mount.CGROUP: "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup",
        # Beyond the recipe: PrivateTmp= also makes /var/tmp/systemd-private-* directories,
        # which a SIGKILLed systemd never removes; they land in the workdir instead.
        Mount.VAR_TMP: f"mount --bind {q(str(layout.var_tmp))} /var/tmp",
        # Last: the workdir may itself live under the host's /tmp and vanish from view here.
        # Shared folders are bound into the private folder first; --rbind carries them along.
        Mount.TMP: " && ".join(
            [
                *(
                    f"mount --bind {q(str(share))} {q(str(layout.share_mountpoint(share)))}"
                    for share in layout.shares
                ),
                f"mount --rbind {q(str(layout.tmp))} /tmp",
            ]
        ),
    }
    if not layout.overlay_system:
        del commands[Mount.OVERLAY]
    return commands


# Places systemd 252 reads units or runs generators from, besides the ones mounted over.
# Each must be absent or empty, else its contents would be loaded or run.
_MUST_BE_EMPTY = (
    "/lib/systemd/system",
    "/lib/systemd/system-generators",
    "/usr/local/lib/systemd/system",
    "/usr/local/lib/systemd/system-generators",
    "/etc/systemd/system-generators",
    "/etc/systemd/system.control",
    "/etc/systemd/system.attached",
    "/run/systemd/system",
    "/run/systemd/system-generators",
    "/run/systemd/transient",
    "/usr/lib/systemd/system-environment-generators",
    "/usr/local/lib/systemd/system-environment-generators",
    "/etc/systemd/system-environment-generators",
    # Run by systemd-shutdown; the sandbox never shuts down cleanly, but keep it empty anyway.
    "/usr/lib/systemd/system-shutdown",
)


def inner_script(
    layout: Layout,
    console: str,
    skip_mounts: frozenset[Mount] = frozenset(),
    verify_only: bool = False,
) -> str:
    """The shell script run as PID 1 of the new namespaces: mount, check, then exec systemd.

    The checks do not trust the mount commands: each one looks at what is mounted now.
    With `verify_only` (forced when mounts are skipped) the script exits 0 where it would
    exec systemd, so a broken check can never start systemd on an incomplete sandbox.
    """
    q = shlex.quote
    commands = _mount_commands(layout, console)
    mount_lines = [
        f"{cmd} || refuse 'mounting {mount} failed'"
        for mount, cmd in commands.items()
        if mount not in skip_mounts
    ]
    share_ids = [
        f"share_id_{i}=$(ident {q(str(share))}) || refuse 'no shared folder {share}'"
        for i, share in enumerate(layout.shares)
    ]
    share_checks = [
        f'[ "$(ident {q(str(share))})" = "$share_id_{i}" ]'
        f" || refuse 'shared folder {share} is not the host one'"
        for i, share in enumerate(layout.shares)
    ]
    # mountinfo: "... ROOT MOUNTPOINT OPTIONS - overlay overlay rw,lowerdir=...,upperdir=...".
    overlay_checks = [
        f'[ "$(fstype /{top})" = overlayfs ]'
        f" && grep -q {q(f' /{top} .* overlay .*upperdir={layout.overlay_upper(top)},')}"
        " /proc/self/mountinfo"
        f" || refuse '/{top} is not an overlay writing to the sandbox'"
        for top in (OVERLAY_TOPS if layout.overlay_system else ())
    ]
    empty_checks = [
        f"[ ! -e {d} ] || [ -z \"$(ls -A {d})\" ] || refuse '{d} is not empty'"
        for d in _MUST_BE_EMPTY
    ]
    if verify_only or skip_mounts:
        final = 'echo "olladist-sandbox: checks passed; verify-only, systemd not started" >&2'
    else:
        final = (
            f"export container={q(layout.name)}\n"
            f"exec {SYSTEMD} --system --unit={BOOT_TARGET} --log-target=console"
        )
    return "\n".join(
        [
            "set -u",
            "refuse() {",
            f'  echo "olladist-sandbox: refusing to start systemd: $*" >&2; exit {REFUSED_EXIT}',
            "}",
            'ident() { stat -L -c %d:%i "$1"; }',
            'fstype() { stat -L -f -c %T "$1"; }',
            # Identities of the sources, taken while the workdir is still visible.
            f"units_id=$(ident {q(str(layout.units))}) || refuse 'no unit folder'",
            f"console_id=$(ident {q(console)}) || refuse 'no console'",
            f"tmp_id=$(ident {q(str(layout.tmp))}) || refuse 'no private tmp'",
            f"var_tmp_id=$(ident {q(str(layout.var_tmp))}) || refuse 'no private var-tmp'",
            "host_tmp_id=$(ident /tmp) || refuse 'no /tmp'",
            *share_ids,
            f"[ ! -e /tmp/{layout.marker} ] || refuse 'private tmp marker already in host /tmp'",
            # Killing PID 1 must take every process of the sandbox with it.
            "[ $$ = 1 ] || refuse 'not PID 1 of a new PID namespace'",
            # A shared mount would carry these mounts over to the host.
            'propagation=$(findmnt -n -r -o PROPAGATION) && [ -n "$propagation" ]'
            " || refuse 'cannot list mounts'",
            '[ -z "$(echo "$propagation" | grep -vx private)" ]'
            " || refuse 'a mount is not private'",
            *mount_lines,
            *overlay_checks,
            'mountpoint -q /run && [ "$(fstype /run)" = tmpfs ]'
            " || refuse '/run is not a private tmpfs'",
            "[ -d /run/lock ] || refuse '/run/lock is missing'",
            "mountpoint -q /etc/systemd/system"
            ' && [ "$(ident /etc/systemd/system)" = "$units_id" ]'
            " || refuse '/etc/systemd/system is not the sandbox unit folder'",
            f"[ -f /etc/systemd/system/{BOOT_TARGET} ] || refuse 'no {BOOT_TARGET}'",
            "for d in /usr/lib/systemd/system /usr/lib/systemd/system-generators; do",
            '  mountpoint -q "$d" && [ "$(fstype "$d")" = tmpfs ] && [ -z "$(ls -A "$d")" ]'
            ' || refuse "$d is not an empty tmpfs"',
            "done",
            *empty_checks,
            'mountpoint -q /dev/console && [ "$(ident /dev/console)" = "$console_id" ]'
            " || refuse '/dev/console is not the sandbox console'",
            'mountpoint -q /sys/fs/cgroup && [ "$(fstype /sys/fs/cgroup)" = cgroup2fs ]'
            " || refuse '/sys/fs/cgroup is not cgroup2'",
            "grep -qx '0::/' /proc/self/cgroup || refuse 'not in a private cgroup namespace'",
            'mountpoint -q /var/tmp && [ "$(ident /var/tmp)" = "$var_tmp_id" ]'
            " || refuse '/var/tmp is not the private var-tmp folder'",
            'mountpoint -q /tmp && [ "$(ident /tmp)" = "$tmp_id" ]'
            ' && [ "$(ident /tmp)" != "$host_tmp_id" ]'
            f" && [ -e /tmp/{layout.marker} ]"
            " || refuse '/tmp is not the private tmp folder'",
            *share_checks,
            'echo "olladist-sandbox: all mounts verified" >&2',
            final,
            "",
        ]
    )
