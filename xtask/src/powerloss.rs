//! `cargo xtask powerloss [--cuts N]`: power cuts, which a SIGKILL cannot
//! fake (it keeps the page cache, so a missing fsync never shows). Debian
//! 12's kernel boots under qemu with a virtual disk (ext4, made here); the
//! guest first verifies what the previous boot left, then runs a workload
//! on the disk (ingests, snapshots written through overlay mounts and
//! committed, removals, collections), appending each acknowledged object
//! to a log it syncs to the disk before going on. The host kills qemu at a random instant: the guest's
//! page cache is gone as in a power cut. The next boot must find every
//! acknowledged object intact and `strata check` clean. N cuts (3 by
//! default, the CI's short run), then a last boot that only verifies.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::qemu;

/// Runs after every boot: checks the root on the disk and every object the
/// log says was acknowledged and not since removed.
const VERIFY: &str = r#"
R=/disk/root
S="strata --root $R --backend overlay --lock-timeout 0s"
if [ -f /disk/acked ]; then
  awk 'substr($0,1,1)=="+" {live[substr($0,2)]=1} substr($0,1,1)=="-" {delete live[substr($0,2)]} END {for (k in live) print k}' /disk/acked > /tmp/live
  bad=0; n=0
  $S check > /tmp/check 2>&1 || { bad=1; echo "VERIFY-FAILED strata check"; cat /tmp/check; }
  while read -r item; do
    kind=${item%%:*}; name=${item#*:}
    case $kind in
      c) got=$($S content cat "$name" | sha256sum | cut -d' ' -f1)
         [ "sha256:$got" = "$name" ] || { bad=1; echo "VERIFY-FAILED blob $name reads as $got"; } ;;
      s) if $S mount "$name" /mnt/r > /dev/null; then
           [ "$(cat /mnt/r/f)" = "$name" ] || { bad=1; echo "VERIFY-FAILED snapshot $name: f is $(cat /mnt/r/f)"; }
           [ "$(wc -c < /mnt/r/big)" = 65536 ] || { bad=1; echo "VERIFY-FAILED snapshot $name: big is short"; }
           $S umount /mnt/r > /dev/null
         else bad=1; echo "VERIFY-FAILED snapshot $name does not mount"; fi ;;
    esac
    n=$((n + 1))
  done < /tmp/live
  [ $bad = 0 ] && echo "VERIFY-OK $n acknowledged objects intact"
else
  echo "VERIFY-OK fresh disk"
fi
"#;

/// The workload the cut interrupts; every acknowledgement is synced.
const WORKLOAD: &str = r#"
B=$(cut -c1-8 /proc/sys/kernel/random/uuid)
ack() { echo "$1" >> /disk/acked; sync; }
mkdir -p /mnt/w
echo WORKLOAD-STARTED
i=0
while true; do
  i=$((i + 1))
  head -c $((RANDOM * 2 + 1)) /dev/urandom > /tmp/blob
  d=$($S content ingest /tmp/blob) && ack "+c:$d"
  name=s-$B-$i
  $S snapshot prepare w-$name > /dev/null
  $S mount w-$name /mnt/w --rw > /dev/null
  echo $name > /mnt/w/f
  dd if=/dev/urandom of=/mnt/w/big bs=4096 count=16 2> /dev/null
  $S umount /mnt/w > /dev/null
  $S snapshot commit $name w-$name > /dev/null && ack "+s:$name"
  if [ $((i % 4)) = 0 ]; then
    victim=$(awk 'substr($0,1,3)=="+s:" {v=substr($0,4)} END {print v}' /disk/acked)
    [ -n "$victim" ] && ack "-s:$victim" && $S snapshot rm "$victim" > /dev/null
  fi
  [ $((i % 5)) = 0 ] && $S gc > /dev/null
done
"#;

fn seed() -> u64 {
    std::env::var("STRATA_POWERLOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// One boot: runs until the guest powers off, or is killed `cut` after the
/// workload starts. Returns the console.
fn boot(
    vmlinuz: &std::path::Path,
    image: &std::path::Path,
    disk: &std::path::Path,
    cut: Option<Duration>,
) -> anyhow::Result<String> {
    let mut cmd = qemu::guest(vmlinuz, image, "600");
    cmd.arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().context("run qemu")?;
    let stdout = child.stdout.take().context("qemu's console")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = String::new();
    let mut deadline: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if line.contains("WORKLOAD-STARTED") {
                    deadline = cut.map(|c| Instant::now() + c);
                }
                writeln!(console, "{line}")?;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // The power cut: qemu (through `timeout`, its parent) is killed.
            Command::new("pkill")
                .args(["-KILL", "-P", &child.id().to_string()])
                .status()?;
            child.kill().ok();
            break;
        }
    }
    child.wait()?;
    reader.join().ok();
    Ok(console)
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let cuts: usize = match args {
        [] => 3,
        ["--cuts", n] => n.parse().context("--cuts needs a number")?,
        _ => bail!("usage: cargo xtask powerloss [--cuts N]"),
    };
    for tool in ["qemu-system-x86_64", "busybox", "cpio", "mkfs.ext4"] {
        if qemu::which(tool).is_none() {
            bail!(
                "{tool} is missing (apt-get install qemu-system-x86 busybox-static cpio e2fsprogs)"
            );
        }
    }
    let ws = crate::workspace();
    crate::run(crate::cargo().args(["build", "-p", "strata-cli"]))?;
    let strata = ws.join("target/debug/strata");
    let dir = ws.join("target/qemu");
    std::fs::create_dir_all(&dir)?;
    let (vmlinuz, overlay) = qemu::kernel(&dir)?;
    let mut modules = vec![overlay];
    for m in [
        "virtio_ring",
        "virtio",
        "virtio_pci_modern_dev",
        "virtio_pci_legacy_dev",
        "virtio_pci",
        "virtio_blk",
    ] {
        modules.push(qemu::module(&dir, m)?);
    }
    let mount_disk = "mkdir -p /disk /mnt/r\n\
while [ ! -b /dev/vda ]; do sleep 0.1; done\n\
mount -t ext4 /dev/vda /disk || echo VERIFY-FAILED the disk does not mount\n";
    let verify_only = format!("{mount_disk}( {VERIFY} ) 2>&1\numount /disk\npoweroff -f\n");
    let with_workload = format!(
        "{mount_disk}( {VERIFY} ) 2>&1\nS=\"strata --root /disk/root --backend overlay --lock-timeout 0s\"\n( {WORKLOAD} ) 2>&1\n"
    );
    let verify_image = qemu::initramfs(&dir, "powerloss-verify", &strata, &modules, &verify_only)?;
    let work_image = qemu::initramfs(&dir, "powerloss-work", &strata, &modules, &with_workload)?;
    let disk = dir.join("powerloss.img");
    let _ = std::fs::remove_file(&disk);
    crate::run(Command::new("truncate").arg("-s").arg("512M").arg(&disk))?;
    crate::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk))?;

    let seed = seed();
    eprintln!(
        "powerloss: {cuts} cuts, seed {seed} (STRATA_POWERLOSS_SEED={seed} replays the timing)"
    );
    let mut rng = seed | 1;
    let log = dir.join("powerloss-console.log");
    let mut all = String::new();
    let mut verified = Vec::new();
    for cut in 0..=cuts {
        let last = cut == cuts;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        // 3 to 20 seconds of workload before the cut.
        let after = Duration::from_millis(3_000 + rng % 17_000);
        let console = if last {
            boot(&vmlinuz, &verify_image, &disk, None)?
        } else {
            boot(&vmlinuz, &work_image, &disk, Some(after))?
        };
        writeln!(all, "=== boot {cut} ===\n{console}")?;
        std::fs::write(&log, &all)?;
        let failed: Vec<&str> = console
            .lines()
            .filter(|l| l.contains("VERIFY-FAILED"))
            .collect();
        if !failed.is_empty() {
            bail!(
                "boot {cut}: after a power cut: {} (console in {})",
                failed.join("; "),
                log.display()
            );
        }
        let Some(ok) = console.lines().find(|l| l.contains("VERIFY-OK")) else {
            bail!(
                "boot {cut}: the guest did not verify (console in {})",
                log.display()
            );
        };
        // From the marker on (the console may carry terminal codes first).
        let ok = &ok[ok.find("VERIFY-OK").unwrap_or(0)..];
        verified.push(ok.trim().to_owned());
        if !last && !console.contains("WORKLOAD-STARTED") {
            bail!(
                "boot {cut}: the workload did not start (console in {})",
                log.display()
            );
        }
        eprintln!(
            "powerloss: boot {cut}: {}{}",
            ok.trim(),
            if last {
                String::new()
            } else {
                format!("; cut after {:.1} s of workload", after.as_secs_f64())
            }
        );
    }
    eprintln!("powerloss: {cuts} power cuts survived");
    Ok(())
}
