#!/bin/busybox sh
# /init of the Lifeboat test guest (busybox initramfs, see README.md).
# Kernel command line: lifeboat.mode=write|idle|check, lifeboat.write_kib_s=N,
# lifeboat.agent=0 (qemu-ga not started: an agent channel nobody answers on).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
mkdir -p /run/lifeboat /run/qga /var
ln -s /run /var/run
exec </dev/console >/dev/console 2>&1

# Dependency order, computed from modules.dep when the initramfs was built.
for m in $(cat /etc/lifeboat/modules); do insmod "/lib/modules/$m"; done

mode=write
rate=64
agent=1
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    lifeboat.mode=*) mode="${arg#*=}" ;;
    lifeboat.write_kib_s=*) rate="${arg#*=}" ;;
    lifeboat.agent=*) agent="${arg#*=}" ;;
  esac
done

# virtio_blk probes asynchronously after insmod returns.
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
[ -b /dev/vda ] || echo "LIFEBOAT-GUEST ERROR no /dev/vda"

# qemu-ga's guest-shutdown (virsh shutdown --mode agent) runs /sbin/shutdown, which
# busybox lacks: power off cleanly (disk flushed) once the agent has answered.
mkdir -p /sbin
printf '#!/bin/sh\n( sleep 1; sync; if [ "$1" = -r ]; then reboot -f; else poweroff -f; fi ) >/dev/null 2>&1 &\n' >/sbin/shutdown
chmod 755 /sbin/shutdown

# The agent's port only exists when the domain has the channel; its name appears
# in sysfs a little after virtio_console binds, and udev (absent here) would
# normally make the /dev/virtio-ports/<name> link.
agent_port() {
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && echo "/dev/${p##*/}" && return
  done
}
if [ "$agent" = 1 ] && ls /sys/bus/virtio/drivers/virtio_console/ 2>/dev/null | grep -q virtio; then
  i=0
  port=$(agent_port)
  while [ -z "$port" ] && [ $i -lt 40 ]; do usleep 50000; port=$(agent_port); i=$((i + 1)); done
  if [ -n "$port" ]; then
    LD_LIBRARY_PATH=/lib/x86_64-linux-gnu qemu-ga -m virtio-serial -p "$port" \
      -F/etc/qemu/fsfreeze-hook -t /run/qga -f /run/qemu-ga.pid &
    ga=$!
    # READY promises a working agent: wait until qemu-ga holds the port open, so
    # that libvirt has seen the guest side connect.
    i=0
    while ! ls -l /proc/$ga/fd 2>/dev/null | grep -q "$port" && [ $i -lt 100 ]; do usleep 50000; i=$((i + 1)); done
  fi
fi

if [ "$mode" = check ]; then
  sum=$(sha256sum /dev/vda)
  echo "LIFEBOAT-DISK sha256=${sum%% *}"
  poweroff -f
fi

# The writer pauses while /run/lifeboat/pause exists (frozen) or a hashing.* file
# does (the freeze hook still hashing the disk), and acknowledges a pause by copying
# its token to /run/lifeboat/paused (see fsfreeze-hook).
writer() {
  blocks=$(($(cat /sys/block/vda/size) / 128))
  period=$((64000000 / rate))
  : >/run/lifeboat/writing
  while :; do
    set -- /run/lifeboat/hashing.*
    if [ -e /run/lifeboat/pause ] || [ -e "$1" ]; then
      cat /run/lifeboat/pause >/run/lifeboat/paused.tmp && mv /run/lifeboat/paused.tmp /run/lifeboat/paused
      usleep 20000
      continue
    fi
    # Each block is flushed to the virtual disk at once, so the image file and
    # QEMU's counters show it without waiting for the guest's writeback.
    off=$(((RANDOM * 32768 + RANDOM) % blocks))
    dd if=/dev/urandom of=/dev/vda bs=65536 seek=$off count=1 conv=notrunc,fsync 2>/dev/null
    usleep $period
  done
}
if [ "$mode" = write ] && [ "$rate" -gt 0 ] && [ -b /dev/vda ]; then
  writer &
fi

echo "LIFEBOAT-GUEST READY mode=$mode write_kib_s=$rate"
# /init must never exit: the kernel panics when it does.
while :; do sleep 3600; done
