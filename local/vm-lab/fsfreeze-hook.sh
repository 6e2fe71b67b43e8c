#!/bin/sh
# qemu-ga runs this on guest-fsfreeze-freeze ("freeze", before it freezes any
# filesystem) and guest-fsfreeze-thaw ("thaw", after thawing), with stdio on
# /dev/null: it reports on the console itself. Prints LIFEBOAT-FROZEN once the
# writer is paused and the disk flushed, then LIFEBOAT-FREEZE sha256=<hex>.
case "$1" in
  freeze)
    token="$$-$(cut -d' ' -f1 /proc/uptime)"
    echo "$token" >/run/lifeboat/pause
    # Wait (when a writer runs) for it to finish its block and acknowledge this
    # very freeze; an acknowledgement left from an earlier freeze carries another token.
    i=0
    while [ "$(cat /run/lifeboat/paused 2>/dev/null)" != "$token" ] && [ $i -lt 200 ] && [ -e /run/lifeboat/writing ]; do
      usleep 20000
      i=$((i + 1))
    done
    if [ -e /run/lifeboat/writing ] && [ "$(cat /run/lifeboat/paused 2>/dev/null)" != "$token" ]; then
      echo "LIFEBOAT-FREEZE-WARNING the writer did not pause" >/dev/console
    fi
    # fsync of the device itself sends a cache flush to the virtual disk: plain sync
    # only writes the page cache out, and QEMU may then still hold the qcow2's
    # new mappings in memory, so the image file alone would not show the writes.
    sync
    sync /dev/vda
    echo "LIFEBOAT-FROZEN" >/dev/console
    # Hashing the disk takes seconds under TCG (more for bigger disks), and libvirt
    # (with the guest's I/O callers) waits for this hook: hash in the background
    # instead. The writer stays paused until the hash is printed, even after a thaw,
    # so the hash is the disk's content at this freeze.
    # lifeboat.freeze_hash=0 (benches with large disks): no hash, the writer resumes at the thaw.
    grep -q 'lifeboat.freeze_hash=0' /proc/cmdline && exit 0
    : >"/run/lifeboat/hashing.$token"
    (
      sum=$(sha256sum /dev/vda)
      echo "LIFEBOAT-FREEZE sha256=${sum%% *}" >/dev/console
      rm -f "/run/lifeboat/hashing.$token"
    ) &
    ;;
  thaw)
    rm -f /run/lifeboat/pause
    echo "LIFEBOAT-THAW" >/dev/console
    ;;
esac
exit 0
