use super::serve::unhex;
use super::*;
use crate::peering::PeerEntry;

fn view(names: &[&str]) -> View {
    View {
        mode: Mode::Known,
        peers: names
            .iter()
            .map(|n| Peer {
                name: n.to_string(),
                address: String::new(),
                seed: seed(n.as_bytes()),
            })
            .collect(),
        ways: NonZeroU32::new(names.len() as u32).unwrap(),
        key: None,
        read: String::new(),
    }
}

#[test]
fn owners_spread_and_only_the_removed_peers_keys_move() {
    let peers = Peers::new(None, None, None, SidecarMetrics::new());
    let three = view(&["web-0", "web-1", "web-2"]);
    let two = view(&["web-0", "web-2"]);
    let mut per = [0usize; 3];
    for i in 0..3000 {
        let key = format!("caller-{i}");
        let (o, p) = peers.owner(&three, "run_cell", &key).unwrap();
        per[o as usize] += 1;
        let (_, q) = peers.owner(&two, "run_cell", &key).unwrap();
        if p.name != "web-1" {
            assert_eq!(p.name, q.name, "a key of a peer that stayed kept its owner");
        }
    }
    for n in per {
        assert!((800..1200).contains(&n), "owners are spread: {per:?}");
    }
}

#[test]
fn a_nonce_is_taken_once() {
    let mut n = Nonces::default();
    assert!(n.fresh("a", 100, 100));
    assert!(!n.fresh("a", 100, 101));
    assert!(n.fresh("b", 100, 101));
}

#[test]
fn the_share_divides_by_the_replicas_or_the_ready_peers() {
    let e = |name: &str| PeerEntry {
        name: name.into(),
        address: "10.0.0.1:9481".into(),
    };
    let f = PeerFile {
        replicas: 3,
        peers: vec![e("a"), e("b")],
    };
    assert_eq!(ways(&f).get(), 3);
    let f = PeerFile {
        replicas: 1,
        peers: vec![e("a"), e("b")],
    };
    assert_eq!(ways(&f).get(), 2);
    let f = PeerFile {
        replicas: 0,
        peers: vec![],
    };
    assert_eq!(ways(&f).get(), 1);
}

#[test]
fn unhex_reads_what_hex_writes() {
    assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
    assert_eq!(unhex("abc"), None);
    assert_eq!(unhex("zz"), None);
}
