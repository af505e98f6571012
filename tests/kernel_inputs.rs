//! The real agent against hostile kernel inputs: interface names that are not
//! UTF-8, a `/proc/stat` whose counters go backwards, and stacked network
//! devices that would count the same traffic twice. Root only (they create
//! interfaces and mount namespaces), as CI runs them.

mod common;

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Agent;

fn ip(args: &[&OsStr]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

/// Deletes a network interface (or a namespace) when dropped.
struct Cleanup(Vec<Vec<std::ffi::OsString>>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in self.0.iter().rev() {
            let _ = Command::new("ip").args(args).status();
        }
    }
}

fn sampler_state(agent: &Agent, name: &str) -> String {
    let all = agent.get_json("/samplers");
    let sampler = all
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no sampler {name}"));
    sampler["state"].as_str().unwrap().to_string()
}

/// A name unique to this test process, at most 15 bytes with the prefix.
fn unique(prefix: &[u8]) -> Vec<u8> {
    let mut name = prefix.to_vec();
    name.extend_from_slice(format!("{:x}", std::process::id() & 0xffff).as_bytes());
    name
}

/// An interface named with bytes that are not UTF-8, created while the agent
/// runs and present when another starts: the sampler stays active, every
/// other interface is still served, and the odd name is an escaped label.
#[test]
fn a_non_utf8_interface_name_costs_nothing_but_its_label() {
    let name = unique(b"rz\xff\xfe");
    let label = format!("rz\\xff\\xfe{}", String::from_utf8_lossy(&name[4..]));
    let agent = Agent::start("", "");
    assert_eq!(sampler_state(&agent, "network_interfaces"), "active");

    let name_os = OsStr::from_bytes(&name);
    ip(&[os("link"), os("add"), name_os, os("type"), os("bridge")]);
    let _cleanup = Cleanup(vec![vec!["link".into(), "del".into(), name_os.to_owned()]]);

    fn receive(interface: &str) -> [(&str, &str); 2] {
        [("direction", "receive"), ("interface", interface)]
    }
    for agent in [&agent, &Agent::start("", "")] {
        let snap = agent.snapshot();
        assert_eq!(sampler_state(agent, "network_interfaces"), "active");
        assert!(
            snap.get("network_bytes", &receive("lo")).is_some(),
            "lo lost"
        );
        assert!(
            snap.get("network_bytes", &receive(&label)).is_some(),
            "no series for {label}"
        );
        assert!(
            snap.get("network_bytes", &[("direction", "receive")])
                .is_some(),
            "total lost"
        );
    }
}

/// The agent in a mount namespace where `/proc/stat` is a file the test
/// rewrites: CPU 0's iowait goes 1000 -> 999 -> 998 -> 1001 ticks. The agent
/// serves it held at 1000 until it passes, counts the held readings, and the
/// exporter reading it sees no counter going backwards.
#[test]
fn iowait_going_backwards_is_held_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let stat = dir.path().join("stat");
    let write = |iowait: u64| {
        // rewritten in place: the bind mount keeps pointing at this inode
        let text = format!(
            "cpu  200 0 100 5000 {t} 0 0 0 0 0\ncpu0 100 0 50 2500 {iowait} 0 0 0 0 0\ncpu1 100 0 50 2500 1000 0 0 0 0 0\nintr 1\nctxt 1\nbtime 1\n",
            t = iowait + 1000
        );
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .create(true)
            .open(&stat)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    };
    write(1000);
    let source = CString::new(stat.as_os_str().as_bytes()).unwrap();
    let agent = Agent::start_with_setup(
        move || {
            common::private_mount_namespace()?;
            // SAFETY: a plain system call on C strings that outlive it
            let bound = unsafe {
                libc::mount(
                    source.as_ptr(),
                    c"/proc/stat".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if bound != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        },
        "",
        "",
    );
    let exporter = Agent::exporter(
        &format!("source = \"http://{}\"\ninterval = \"200ms\"", agent.addr),
        "",
    );
    let tick_ns = 1_000_000_000 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as i128;
    let iowait = |id: Option<&str>| {
        let mut labels = vec![("state", "iowait")];
        labels.extend(id.map(|id| ("id", id)));
        agent.snapshot().value("cpu_usage", &labels) / tick_ns
    };
    let mut served = vec![];
    for ticks in [1000, 999, 998, 1001] {
        write(ticks);
        // the exporter reads every 200 ms: let it see each step
        std::thread::sleep(Duration::from_millis(450));
        served.push((iowait(Some("0")), iowait(None)));
    }
    assert_eq!(
        served,
        vec![(1000, 2000), (1000, 2000), (1000, 2000), (1001, 2001)]
    );
    let held = agent.snapshot().get(
        "rezolus_counter_corrections",
        &[("counter", "cpu_usage"), ("reason", "held")],
    );
    assert!(
        held.is_some_and(|n| n >= 2),
        "held readings counted: {held:?}"
    );

    let text = String::from_utf8(exporter.get("/metrics")).unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    assert_eq!(line("rezolus_exporter_agent_resets_total "), 0.0);
    let ioswait_seconds = line("cpu_usage_seconds_total{id=\"0\",state=\"iowait\"}");
    assert!(
        (ioswait_seconds - 1001.0 * tick_ns as f64 / 1e9).abs() < 1e-9,
        "{ioswait_seconds}"
    );
}

/// Traffic from the host to a network namespace through a bridge and a veth
/// moves the bridge's and the veth's own series by its size, and the
/// all-interface total (device-backed interfaces only) by almost nothing;
/// with `total_all_interfaces = 1` the total counts it on both.
#[test]
fn the_network_total_does_not_count_stacked_devices_twice() {
    const SIZE: usize = 20 << 20;
    let tag = format!("{:x}", std::process::id() & 0xffff);
    let (ns, host, peer, bridge) = (
        format!("rzns{tag}"),
        format!("rzh{tag}"),
        format!("rzp{tag}"),
        format!("rzb{tag}"),
    );
    let net = format!(
        "10.{}.{}",
        100 + (std::process::id() % 100),
        std::process::id() % 250
    );
    let cleanup = Cleanup(vec![
        vec!["netns".into(), "del".into(), ns.clone().into()],
        vec!["link".into(), "del".into(), host.clone().into()],
        vec!["link".into(), "del".into(), bridge.clone().into()],
    ]);
    let run = |args: &str| ip(&args.split(' ').map(os).collect::<Vec<_>>());
    run(&format!("netns add {ns}"));
    run(&format!("link add {host} type veth peer name {peer}"));
    run(&format!("link set {peer} netns {ns}"));
    run(&format!("link add {bridge} type bridge"));
    run(&format!("link set {host} master {bridge}"));
    run(&format!("addr add {net}.1/24 dev {bridge}"));
    run(&format!("link set {bridge} up"));
    run(&format!("link set {host} up"));
    run(&format!("-n {ns} addr add {net}.2/24 dev {peer}"));
    run(&format!("-n {ns} link set {peer} up"));
    run(&format!("-n {ns} link set lo up"));

    let edge = Agent::start("", "");
    let all = Agent::start(
        "",
        "[samplers.network_interfaces]\ntotal_all_interfaces = 1\n",
    );
    // a sink in the namespace that reads everything and reports the count
    let mut sink = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c"])
        .arg(format!(
            "import socket,sys\ns=socket.socket(); s.bind(('{net}.2',5001)); s.listen(1); print('ready', flush=True)\nc,_=s.accept(); n=0\nwhile True:\n  b=c.recv(1<<16)\n  if not b: break\n  n+=len(b)\nprint(n, flush=True)"
        ))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the sink");
    let mut out = sink.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    out.read_exact(&mut ready).unwrap();
    let before = (edge.snapshot(), all.snapshot());

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = loop {
        match std::net::TcpStream::connect(format!("{net}.2:5001")) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("connect: {e}");
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("connect to the namespace: {e}"),
        }
    };
    let chunk = vec![0x5au8; 1 << 16];
    for _ in 0..SIZE / chunk.len() {
        conn.write_all(&chunk).unwrap();
    }
    drop(conn);
    let mut received = String::new();
    out.read_to_string(&mut received).unwrap();
    assert_eq!(received.trim().parse::<usize>().unwrap(), SIZE);
    sink.wait().unwrap();
    let after = (edge.snapshot(), all.snapshot());

    let size = SIZE as i128;
    let grew = |which: usize, interface: Option<&str>| {
        let mut labels = vec![("direction", "transmit")];
        labels.extend(interface.map(|i| ("interface", i)));
        let (b, a) = if which == 0 {
            (&before.0, &after.0)
        } else {
            (&before.1, &after.1)
        };
        a.value("network_bytes", &labels) - b.value("network_bytes", &labels)
    };
    // the traffic crossed both stacked devices
    assert!(
        grew(0, Some(&bridge)) >= size,
        "bridge {}",
        grew(0, Some(&bridge))
    );
    assert!(
        grew(0, Some(&host)) >= size,
        "veth {}",
        grew(0, Some(&host))
    );
    // it never left the host: the edge total barely moves (other traffic on
    // the NIC meanwhile is far below a megabyte in a test)
    assert!(
        grew(0, None) < 1 << 20,
        "edge total moved {} for {size} kept inside the host",
        grew(0, None)
    );
    // counting every interface, it is counted on the bridge and the veth
    assert!(
        grew(1, None) >= 2 * size,
        "all-interface total moved {}",
        grew(1, None)
    );
    drop(cleanup);
}
