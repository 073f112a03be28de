//! End to end: agent behaviour seen from outside — exclude patterns, stable
//! directories above dataset paths, exit status, one snapshot per dataset at
//! a time, and error messages.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Output;

use pulih_e2e::{free_port, set_mtime, Controller};

fn write(p: &Path, data: &[u8]) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Every entry under `root`, relative, directories with a trailing `/`.
fn entries(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every exclude rule, through the real agent: what a pattern excludes is
/// absent from the restore, everything else is there.
#[test]
fn exclude_patterns_leave_out_exactly_what_they_match() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("srv/app");
    let etc = tmp.path().join("etc/app");
    for f in [
        "keep.txt",
        "a.tmp",           // *.tmp (a name, any depth)
        "sub/b.tmp",       // *.tmp
        "sub/cache",       // a file: cache/ is for directories only
        "cache/c",         // cache/
        "var/lib/d",       // var/lib/ (relative, directories only)
        "other/var/lib/e", // not var/lib/: relative to the dataset path
        "var/run",         // a file: var/run/ is for directories only
        "logs/a.gz",       // logs/*.gz
        "logs/a.txt",      // not logs/*.gz
        "logs/old/b.gz",   // not logs/*.gz: * does not match /
        "deep/logs/c.gz",  // not logs/*.gz: relative to the dataset path
        "tmp/t",           // /…/srv/app/tmp (absolute)
        "data/x.bak",      // /…/srv/app/data/*.bak
        "data/deep/y.bak", // not /…/data/*.bak: * does not match /
        "spool",           // a file: /…/srv/app/spool/ is for directories only
        "build/a.o",       // build/**/*.o (** matches zero directories)
        "build/x/y/z.o",   // build/**/*.o
        "build/a.c",       // not build/**/*.o
    ] {
        write(&app.join(f), f.as_bytes());
    }
    for f in ["app.conf", "logs/c.gz", "logs/old/d.gz", "tmp/kept"] {
        write(&etc.join(f), f.as_bytes());
    }
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "web");
    let abs_tmp = format!("{}/tmp", app.display());
    let abs_bak = format!("{}/data/*.bak", app.display());
    let abs_spool = format!("{}/spool/", app.display());
    agent.add_dataset(
        "d",
        &[&app, &etc],
        &["*.tmp", "cache/", "var/lib/", "var/run/", "logs/*.gz", &abs_tmp, &abs_bak, &abs_spool, "build/**/*.o"],
    );
    let snap = agent.snapshot();
    assert_eq!(snap.errors, 0, "{snap:?}");

    let dest = tmp.path().join("r");
    let out = ctl.restore(&snap.id, None, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    let under = |p: &Path| dest.join(p.strip_prefix("/").unwrap());
    let expected_app = [
        "build/",
        "build/a.c",
        "build/x/",
        "build/x/y/",
        "data/",
        "data/deep/",
        "data/deep/y.bak",
        "deep/",
        "deep/logs/",
        "deep/logs/c.gz",
        "keep.txt",
        "logs/",
        "logs/a.txt",
        "logs/old/",
        "logs/old/b.gz",
        "other/",
        "other/var/",
        "other/var/lib/",
        "other/var/lib/e",
        "spool",
        "sub/",
        "sub/cache",
        "var/",
        "var/run",
    ];
    assert_eq!(entries(&under(&app)), expected_app);
    // Relative patterns apply under each dataset path; absolute ones only where they point.
    assert_eq!(entries(&under(&etc)), ["app.conf", "logs/", "logs/old/", "logs/old/d.gz", "tmp/", "tmp/kept"]);
    for f in ["keep.txt", "other/var/lib/e", "logs/old/b.gz", "sub/cache", "var/run", "spool"] {
        assert_eq!(fs::read(under(&app).join(f)).unwrap(), f.as_bytes());
    }
}

/// The directories above a dataset path are recorded with mtime 0, so
/// activity next to the dataset does not change the snapshot: nothing is
/// sent for an unchanged dataset.
#[test]
fn changes_next_to_the_dataset_send_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("srv/simpeg/data");
    write(&data.join("a.txt"), b"a");
    write(&data.join("sub/b.txt"), b"b");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "bkpsdm");
    agent.add_dataset("simpeg", &[&data], &[]);
    let first = agent.snapshot();
    assert!(first.bytes_sent > 0, "{first:?}");
    let second = agent.snapshot();
    assert_eq!((second.bytes_read, second.bytes_sent), (0, 0), "{second:?}");

    // New siblings of the dataset directory, of its parent and of the
    // parent's parent; the mtimes are also set explicitly so that they
    // differ from the last snapshot's even on a coarse clock.
    let simpeg = tmp.path().join("srv/simpeg");
    let srv = tmp.path().join("srv");
    write(&simpeg.join("data.old"), b"x");
    write(&srv.join("other/y"), b"y");
    write(&tmp.path().join("unrelated"), b"z");
    for (i, d) in [&simpeg, &srv, &tmp.path().to_path_buf()].into_iter().enumerate() {
        set_mtime(d, 1_234_567_890_000_000_000 + i as i64);
    }
    let third = agent.snapshot();
    assert_eq!((third.bytes_read, third.bytes_sent, third.bytes_new), (0, 0, 0), "{third:?}");

    // Those directories keep their mode and owner, with mtime 0.
    let dest = tmp.path().join("r");
    let out = ctl.restore(&third.id, None, &dest);
    assert!(out.status.success(), "{}", stderr(&out));
    let restored = dest.join(srv.strip_prefix("/").unwrap());
    let (a, b) = (fs::metadata(&srv).unwrap(), fs::metadata(&restored).unwrap());
    assert_eq!(b.mtime(), 0);
    assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777);
    if rustix::process::geteuid().is_root() {
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()));
    }
    assert_eq!(fs::read(dest.join(data.strip_prefix("/").unwrap()).join("sub/b.txt")).unwrap(), b"b");
}

/// 0: every snapshot committed without problems; 3: committed, but some
/// entries could not be read; 1: a dataset failed.
#[test]
fn exit_status_tells_problems_from_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let sock = tmp.path().join("sock");
    write(&clean.join("a"), b"a");
    write(&sock.join("b"), b"b");
    let _listener = std::os::unix::net::UnixListener::bind(sock.join("app.sock")).unwrap();
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("clean", &[&clean], &[]);
    agent.add_dataset("sock", &[&sock], &[]);
    agent.add_dataset("gone", &[&tmp.path().join("does-not-exist")], &[]);
    let warning = "warning: dataset sock: snapshot committed, but 1 entries could not be read; see the log";

    let out = agent.run_snapshot(&["--dataset", "clean"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning: dataset"), "{}", stderr(&out));

    let out = agent.run_snapshot(&["--dataset", "sock"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["errors"], 1);

    let out = agent.run_snapshot(&["--dataset", "gone"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("error: dataset gone:"), "{}", stderr(&out));

    // A failure outweighs problems; the other datasets are still committed.
    let before = ctl.snapshots().len();
    let out = agent.run_snapshot(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(warning), "{}", stderr(&out));
    assert_eq!(ctl.snapshots().len(), before + 2);
}

/// A second snapshot of a dataset while one runs is refused at once, and
/// the dataset can be snapshotted again when the first is done.
#[test]
fn one_snapshot_per_dataset_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"a");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);

    let lock_path = agent.state.join("cache/d.lock");
    fs::create_dir_all(lock_path.parent().unwrap()).unwrap();
    let lock = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let started = std::time::Instant::now();
    let out = agent.snapshot_raw();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let expected = format!("another snapshot of dataset d is already running (lock {})", lock_path.display());
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    // Not a temporary failure: no retry.
    assert!(!stderr(&out).contains("snapshot attempt failed"), "{}", stderr(&out));
    assert!(started.elapsed().as_secs() < 5);
    assert!(ctl.snapshots().is_empty());

    rustix::fs::flock(&lock, rustix::fs::FlockOperation::Unlock).unwrap();
    let snap = agent.snapshot();
    assert_eq!(snap.files, 1, "{snap:?}");
    // The lock is released when the snapshot ends.
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
}

/// An error is printed with each cause once (the connection error used to
/// repeat "Connection refused").
#[test]
fn connection_errors_name_the_cause_once() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    write(&src.join("a"), b"a");
    let ctl = Controller::start(tmp.path());
    let agent = ctl.enroll(tmp.path(), "opd");
    agent.add_dataset("d", &[&src], &[]);
    let closed = format!("127.0.0.1:{}", free_port());
    let config = fs::read_to_string(&agent.config).unwrap();
    assert!(config.contains(&ctl.addr.to_string()));
    fs::write(&agent.config, config.replace(&ctl.addr.to_string(), &closed)).unwrap();

    let out = agent.snapshot_raw(); // retried 3 times: about 12 s
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(last.contains(&format!("cannot reach the controller at {closed}")), "{last}");
    assert_eq!(last.matches("Connection refused").count(), 1, "{last}");
    // The retry warnings too.
    let retries: Vec<_> = err.lines().filter(|l| l.contains("snapshot attempt failed")).collect();
    assert_eq!(retries.len(), 3, "{err}");
    for l in retries {
        assert_eq!(l.matches("Connection refused").count(), 1, "{l}");
    }
}

trait RunSnapshot {
    fn run_snapshot(&self, args: &[&str]) -> Output;
}

impl RunSnapshot for pulih_e2e::Agent {
    /// `snapshot --json` with extra arguments.
    fn run_snapshot(&self, args: &[&str]) -> Output {
        let mut all = vec!["snapshot", "--json"];
        all.extend_from_slice(args);
        pulih_e2e::run(&mut self.cmd(&all))
    }
}
