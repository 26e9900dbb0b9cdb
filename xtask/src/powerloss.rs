//! `cargo xtask powerloss [--cuts N] [--broken]`: power cuts, which a
//! SIGKILL cannot fake (it keeps the page cache, so a missing fsync never
//! shows). Debian 12's kernel boots under qemu with a virtual ext4 disk;
//! the guest first verifies what earlier boots acknowledged, then runs a
//! workload on the disk: blobs ingested, snapshots written through overlay
//! mounts and committed, OCI images imported and named, removals and
//! collections. Nothing in the guest calls `sync`: an object is
//! acknowledged by a line on the serial console the moment the command
//! that made it returns, and the host keeps the list (a second virtual
//! disk carries it into the next boot). So only Strata's own fsyncs make an
//! acknowledged object durable.
//!
//! The host kills qemu, the guest's page cache gone as in a power cut:
//! alternately the instant an acknowledgement of a blob, a snapshot or an
//! image (in turn) arrives, and at a random moment in the middle of later
//! work. Each cut needs at least
//! [`MIN_ACKS`] acknowledgements before it; a workload command that fails
//! fails the run. Every boot after a cut must find every acknowledged
//! object intact and `strata check` clean. N cuts (CI makes two), then a
//! last boot that only verifies.
//!
//! `--broken` builds `strata` with the content store skipping its blob
//! fsync (feature `strata-content/test-skip-blob-fsync`) and succeeds only
//! when the cuts catch a lost blob: the harness shown failing on a build
//! that is wrong.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

use crate::qemu;

/// Acknowledgements each cut needs before it may land.
const MIN_ACKS: usize = 8;

/// Runs after every boot: checks the root and every object the host says
/// was acknowledged and not since removed (one per line on /dev/vdb).
const VERIFY: &str = r#"
R=/disk/root
S="strata --root $R --backend overlay --lock-timeout 0s"
tr -d '\000' < /dev/vdb | grep . > /tmp/live
bad=0; n=0
if [ -d $R ]; then
  $S check > /tmp/check 2>&1 || { bad=1; echo "VERIFY-FAILED strata check"; cat /tmp/check; }
fi
while read -r item; do
  kind=${item%%:*}; rest=${item#*:}
  case $kind in
    c) got=$($S content cat "$rest" | sha256sum | cut -d' ' -f1)
       [ "sha256:$got" = "$rest" ] || { bad=1; echo "VERIFY-FAILED blob $rest reads as sha256:$got"; } ;;
    s) name=${rest%%:*}; sum=${rest#*:}
       if $S mount "$name" /mnt/r > /dev/null; then
         [ "$(cat /mnt/r/f)" = "$name" ] || { bad=1; echo "VERIFY-FAILED snapshot $name: f is $(cat /mnt/r/f)"; }
         got=$(sha256sum < /mnt/r/big | cut -d' ' -f1)
         [ "$got" = "$sum" ] || { bad=1; echo "VERIFY-FAILED snapshot $name: big reads as $got, not $sum"; }
         $S umount /mnt/r > /dev/null
       else bad=1; echo "VERIFY-FAILED snapshot $name does not mount"; fi ;;
    i) name=${rest%%:*}; r=${rest#*:}; ref=${r%%:*}; sum=${r#*:}
       $S image inspect "$name" > /dev/null || { bad=1; echo "VERIFY-FAILED image $name is not named"; }
       if $S mount "$ref" /mnt/r > /dev/null; then
         got=$(sha256sum < /mnt/r/img | cut -d' ' -f1)
         [ "$got" = "$sum" ] || { bad=1; echo "VERIFY-FAILED image $name: img reads as $got, not $sum"; }
         $S umount /mnt/r > /dev/null
       else bad=1; echo "VERIFY-FAILED image $name's ref $ref does not mount"; fi ;;
    *) bad=1; echo "VERIFY-FAILED unknown item $item" ;;
  esac
  n=$((n + 1))
done < /tmp/live
[ $bad = 0 ] && echo "VERIFY-OK $n"
"#;

/// The workload the cut interrupts. `ack` only prints: no sync anywhere.
/// `must` runs a command that has to succeed, or says which failed.
const WORKLOAD: &str = r#"
B=$(cut -c1-8 /proc/sys/kernel/random/uuid)
ack() { echo "STRATA-ACK $1"; }
must() { "$@" > /tmp/out 2> /tmp/err || { echo "WORKLOAD-FAILED $* (exit $?): $(tail -n 3 /tmp/err)"; poweroff -f; }; cat /tmp/out; }
# An OCI layout of one uncompressed layer holding /img (a copy of $2).
layout() {
  rm -rf $1 /tmp/tree /tmp/empty; mkdir -p $1/blobs/sha256 /tmp/tree /tmp/empty
  cp $2 /tmp/tree/img
  must $S layer diff /tmp/empty /tmp/tree -o /tmp/layer.tar --compression none > /dev/null
  l=$(sha256sum < /tmp/layer.tar | cut -d' ' -f1); ls=$(($(wc -c < /tmp/layer.tar)))
  cp /tmp/layer.tar $1/blobs/sha256/$l
  printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' $l > /tmp/config
  c=$(sha256sum < /tmp/config | cut -d' ' -f1); cs=$(($(wc -c < /tmp/config)))
  cp /tmp/config $1/blobs/sha256/$c
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' $c $cs $l $ls > /tmp/manifest
  m=$(sha256sum < /tmp/manifest | cut -d' ' -f1); ms=$(($(wc -c < /tmp/manifest)))
  cp /tmp/manifest $1/blobs/sha256/$m
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' $m $ms > $1/index.json
  echo '{"imageLayoutVersion":"1.0.0"}' > $1/oci-layout
}
mkdir -p /mnt/w
echo WORKLOAD-STARTED
i=0
while true; do
  i=$((i + 1))
  head -c $((RANDOM * 2 + 1)) /dev/urandom > /tmp/blob
  d=$(must $S content ingest /tmp/blob)
  ack "+c:$d"

  name=s-$B-$i
  dd if=/dev/urandom of=/tmp/big bs=4096 count=16 2> /dev/null
  sum=$(sha256sum < /tmp/big | cut -d' ' -f1)
  must $S snapshot prepare w-$name > /dev/null
  must $S mount w-$name /mnt/w --rw > /dev/null
  echo $name > /mnt/w/f
  cp /tmp/big /mnt/w/big
  must $S umount /mnt/w > /dev/null
  must $S snapshot commit $name w-$name > /dev/null
  ack "+s:$name:$sum"

  if [ $((i % 2)) = 0 ]; then
    img=i-$B-$i
    head -c $((RANDOM + 1)) /dev/urandom > /tmp/payload
    sum=$(sha256sum < /tmp/payload | cut -d' ' -f1)
    layout /tmp/layout /tmp/payload
    ref=$(must $S image import oci:/tmp/layout:latest --name $img)
    ack "+i:$img:$ref:$sum"
  fi
  if [ $((i % 4)) = 0 ]; then
    ack "-s:s-$B-$((i - 2))"
    must $S snapshot rm s-$B-$((i - 2)) > /dev/null
  fi
  if [ $((i % 6)) = 0 ]; then
    ack "-i:i-$B-$((i - 4))"
    must $S image rm i-$B-$((i - 4)) > /dev/null
  fi
  [ $((i % 3)) = 0 ] && must $S gc > /dev/null
done
"#;

/// Objects acknowledged and not since removed, as the guest's verifier
/// reads them (`c:DIGEST`, `s:NAME:SUM`, `i:NAME:REF:SUM`).
#[derive(Debug, Default)]
struct Acked {
    live: BTreeSet<String>,
}

impl Acked {
    /// Takes one acknowledgement: `+ITEM` adds, `-KIND:NAME` removes the
    /// item of that kind and name (its removal may or may not land before
    /// a cut, so it is no longer checked either way).
    fn take(&mut self, ack: &str) -> anyhow::Result<()> {
        if let Some(item) = ack.strip_prefix('+') {
            self.live.insert(item.to_owned());
        } else if let Some(gone) = ack.strip_prefix('-') {
            let prefix = format!("{gone}:");
            self.live.retain(|i| !i.starts_with(&prefix));
        } else {
            bail!("unreadable acknowledgement {ack:?}");
        }
        Ok(())
    }

    /// The list for the next boot's verifier, as a raw disk image (whole
    /// sectors, padded with NULs the verifier drops).
    fn write_disk(&self, path: &Path) -> anyhow::Result<()> {
        let mut bytes: Vec<u8> = self
            .live
            .iter()
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        bytes.resize(bytes.len().div_ceil(512).max(1) * 512, 0);
        std::fs::write(path, bytes).with_context(|| format!("write {}", path.display()))
    }
}

/// Where a cut lands: the instant the first acknowledgement of a kind
/// (`+c`, `+s`, `+i`) arrives at or after the Nth of the boot, or a while
/// after the Nth, in the middle of later work.
#[derive(Debug, Clone, Copy)]
enum Cut {
    AtAck(usize, &'static str),
    After(usize, Duration),
}

/// The kinds of object a cut right after an acknowledgement aims at, in
/// turn: a blob (nothing after its ingest syncs the file system before the
/// next command), a snapshot, an image.
const KINDS: [&str; 3] = ["+c:", "+s:", "+i:"];

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

/// What one boot showed.
struct Boot {
    console: String,
    acks: usize,
}

/// One boot: runs until the guest powers off, or until the cut. Every
/// acknowledgement on the console goes into `acked` as it arrives.
fn boot(
    vmlinuz: &Path,
    image: &Path,
    disks: &[&Path],
    cut: Option<Cut>,
    acked: &mut Acked,
) -> anyhow::Result<Boot> {
    let mut cmd = qemu::guest(vmlinuz, image, "600");
    for d in disks {
        cmd.arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", d.display()));
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::null());
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
    let mut acks = 0;
    let mut deadline: Option<Instant> = None;
    let mut cut_now = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => {
                writeln!(console, "{line}")?;
                if let Some(at) = line.find("STRATA-ACK ") {
                    let ack = line[at + "STRATA-ACK ".len()..].trim();
                    acked.take(ack)?;
                    acks += 1;
                    match cut {
                        Some(Cut::AtAck(n, kind)) if acks >= n && ack.starts_with(kind) => {
                            cut_now = true;
                        }
                        Some(Cut::After(n, wait)) if acks == n => {
                            deadline = Some(Instant::now() + wait);
                        }
                        _ => {}
                    }
                }
                if line.contains("WORKLOAD-FAILED") {
                    cut_now = true;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if cut_now || deadline.is_some_and(|d| Instant::now() >= d) {
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
    Ok(Boot { console, acks })
}

/// The `strata` binary to put in the guest: the debug build, or with
/// `broken` one whose content store skips its blob fsync, copied aside so
/// the ordinary build is not left broken.
fn strata(broken: bool, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut build = crate::cargo();
    build.args(["build", "-p", "strata-cli"]);
    if broken {
        build.args(["--features", "strata-content/test-skip-blob-fsync"]);
    }
    crate::run(&mut build)?;
    let built = crate::target_dir().join("debug/strata");
    if !broken {
        return Ok(built);
    }
    let aside = dir.join("strata-broken");
    std::fs::copy(&built, &aside)?;
    // Put the ordinary binary back for whoever runs next.
    crate::run(crate::cargo().args(["build", "-p", "strata-cli"]))?;
    Ok(aside)
}

pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let mut cuts = 3;
    let mut broken = false;
    let mut record = false;
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first() {
        match (*first, tail) {
            ("--cuts", [n, more @ ..]) => {
                cuts = n.parse().context("--cuts needs a number")?;
                rest = more;
            }
            ("--broken", more) => {
                broken = true;
                rest = more;
            }
            ("--record", more) => {
                record = true;
                rest = more;
            }
            _ => bail!("usage: cargo xtask powerloss [--cuts N] [--broken] [--record]"),
        }
    }
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "mkfs.ext4",
        "pkill",
    ] {
        if qemu::which(tool).is_none() {
            bail!("{tool} is missing (cargo xtask deps --ci installs it)");
        }
    }
    let dir = crate::workspace().join("target/qemu");
    std::fs::create_dir_all(&dir)?;
    let strata = strata(broken, &dir)?;
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
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ]; do sleep 0.1; done\n\
mount -t ext4 /dev/vda /disk || echo VERIFY-FAILED the disk does not mount\n";
    let verify_only = format!("{mount_disk}( {VERIFY} ) 2>&1\numount /disk\npoweroff -f\n");
    let with_workload = format!(
        "{mount_disk}( {VERIFY} ) 2>&1\nS=\"strata --root /disk/root --backend overlay --lock-timeout 0s\"\n( {WORKLOAD} ) 2>&1\n"
    );
    let verify_image = qemu::initramfs(&dir, "powerloss-verify", &strata, &modules, &verify_only)?;
    let work_image = qemu::initramfs(&dir, "powerloss-work", &strata, &modules, &with_workload)?;
    let disk = dir.join("powerloss.img");
    let list = dir.join("powerloss-acked.img");
    let _ = std::fs::remove_file(&disk);
    crate::run(Command::new("truncate").arg("-s").arg("512M").arg(&disk))?;
    crate::run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&disk))?;

    let seed = seed();
    eprintln!(
        "powerloss: {cuts} cuts{}, seed {seed} (STRATA_POWERLOSS_SEED={seed} replays the choices)",
        if broken {
            ", strata built without its blob fsync"
        } else {
            ""
        }
    );
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let log = dir.join("powerloss-console.log");
    let mut all = String::new();
    let mut acked = Acked::default();
    let (mut total_acks, mut total_verified) = (0, 0);
    for n in 0..=cuts {
        let last = n == cuts;
        // Alternately at an acknowledgement (of each kind in turn) and in
        // the middle of work.
        let at = MIN_ACKS + (next() % 12) as usize;
        let cut = if n % 2 == 0 {
            Cut::AtAck(at, KINDS[(n / 2) % KINDS.len()])
        } else {
            Cut::After(at, Duration::from_millis(next() % 3_000))
        };
        let expected = acked.live.len();
        acked.write_disk(&list)?;
        let b = if last {
            boot(&vmlinuz, &verify_image, &[&disk, &list], None, &mut acked)?
        } else {
            boot(
                &vmlinuz,
                &work_image,
                &[&disk, &list],
                Some(cut),
                &mut acked,
            )?
        };
        writeln!(all, "=== boot {n} ===\n{}", b.console)?;
        std::fs::write(&log, &all)?;
        let lines: Vec<&str> = b.console.lines().collect();
        let marked = |mark: &str| -> Vec<&str> {
            lines.iter().filter(|l| l.contains(mark)).copied().collect()
        };
        let verified = lines
            .iter()
            .find_map(|l| l.split("VERIFY-OK ").nth(1))
            .and_then(|c| c.trim().parse::<usize>().ok());
        // What was acknowledged and is not there now.
        let lost = if !marked("VERIFY-FAILED").is_empty() {
            Some(marked("VERIFY-FAILED").join("; "))
        } else if verified != Some(expected) {
            Some(format!(
                "the guest verified {verified:?} objects, not the {expected} acknowledged"
            ))
        } else {
            None
        };
        match lost {
            Some(why) if broken => {
                eprintln!(
                    "powerloss --broken: boot {n} caught the missing fsync: {why} (console in {})",
                    log.display()
                );
                return Ok(());
            }
            Some(why) => bail!("boot {n}: {why} (console in {})", log.display()),
            None => {}
        }
        let failed = marked("WORKLOAD-FAILED");
        if !failed.is_empty() {
            bail!(
                "boot {n}: {} (console in {})",
                failed.join("; "),
                log.display()
            );
        }
        if !last && b.acks < MIN_ACKS {
            bail!(
                "boot {n}: only {} acknowledgements before the cut, at least {MIN_ACKS} needed (console in {})",
                b.acks,
                log.display()
            );
        }
        total_acks += b.acks;
        total_verified += expected;
        eprintln!(
            "powerloss: boot {n}: {expected} acknowledged objects intact{}",
            if last {
                String::new()
            } else {
                format!("; cut {cut:?} after {} acknowledgements", b.acks)
            }
        );
    }
    if broken {
        bail!(
            "powerloss --broken: {cuts} cuts of a build without its blob fsync lost nothing: the harness cannot see a missing fsync"
        );
    }
    eprintln!("powerloss: {cuts} power cuts survived");
    if record {
        crate::reliability::record(
            "powerloss",
            "cuts",
            &[
                (
                    "run in",
                    "a qemu guest: Debian 12's kernel, ext4 on a virtual disk (the kernel and file system below are the host's)"
                        .to_owned(),
                ),
                (
                    "power cuts, each followed by a verifying boot",
                    cuts.to_string(),
                ),
                ("acknowledgements before the cuts", total_acks.to_string()),
                (
                    "acknowledged objects verified (summed over boots)",
                    total_verified.to_string(),
                ),
                ("seed", format!("{seed}")),
            ],
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removals_retire_what_they_name() {
        let mut a = Acked::default();
        for ack in [
            "+c:sha256:aa",
            "+s:s-1:11",
            "+s:s-10:22",
            "+i:i-2:r:33",
            "-s:s-1",
        ] {
            a.take(ack).unwrap();
        }
        let live: Vec<&str> = a.live.iter().map(String::as_str).collect();
        assert_eq!(live, ["c:sha256:aa", "i:i-2:r:33", "s:s-10:22"]);
        assert!(a.take("?x").is_err());
        let tmp = std::env::temp_dir().join(format!("powerloss-list-{}", std::process::id()));
        a.write_disk(&tmp).unwrap();
        let bytes = std::fs::read(&tmp).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(bytes.len(), 512);
        assert!(bytes.starts_with(b"c:sha256:aa\ni:i-2:r:33\ns:s-10:22\n\0"));
    }
}
