//! What a manager signs with, as the store says, and when a node renews to follow.

use super::*;
use crate::pki::{IssueOptions, Role};

fn rotation_of(old: &ClusterCa) -> (ClusterCa, CaRotation) {
    let (new, cross) = old.successor().unwrap();
    let cross_signed_pem =
        NextRoot::new(old.certificate(), new.certificate().clone(), cross.to_vec())
            .unwrap()
            .cross_signed_pem();
    let rotation = CaRotation {
        from_pem: old.cert_pem(),
        to: StoredCa {
            cert_pem: new.cert_pem(),
            key_pem: new.key_pem_secret(),
        },
        cross_signed_pem,
        started_ms: 1,
    };
    (new, rotation)
}

fn identity(signer: &ClusterCa, trust: crate::pki::CaTrust) -> NodeIdentity {
    let (key, csr) = NodeIdentity::generate_key_and_csr("node1").unwrap();
    let cert = signer
        .issue(&csr, "node1", Role::Worker, &IssueOptions::default())
        .unwrap();
    NodeIdentity::with_trust(key, cert, trust).unwrap()
}

#[test]
fn managers_sign_with_the_next_root_during_a_rotation_and_with_the_stored_root_after() {
    let old = ClusterCa::new("c1").unwrap();
    let mut state = ClusterState::default();
    let s = signers_for(&state, &old).unwrap();
    assert_eq!(s.signing().digest(), old.digest());
    assert_eq!(
        s.target(),
        CaTarget {
            root: old.digest(),
            next: None
        }
    );

    let (new, rotation) = rotation_of(&old);
    state.ca_rotation = Some(rotation.clone());
    let s = signers_for(&state, &old).unwrap();
    assert_eq!(s.root.digest(), old.digest());
    assert_eq!(s.signing().digest(), new.digest());
    assert_eq!(
        s.target(),
        CaTarget {
            root: old.digest(),
            next: Some(new.digest())
        }
    );
    // A manager whose root is another than the rotation's does not sign with it.
    let stranger = ClusterCa::new("c1").unwrap();
    assert!(signers_for(&state, &stranger).is_err());

    // Finished: the stored root, whatever the manager had.
    state.ca_rotation = None;
    state.root_ca = Some(rotation.to.clone());
    for current in [&old, &new] {
        let s = signers_for(&state, current).unwrap();
        assert_eq!(
            s.target(),
            CaTarget {
                root: new.digest(),
                next: None
            }
        );
        assert_eq!(s.signing().key_pem_secret(), new.key_pem_secret());
    }
}

#[test]
fn a_node_renews_until_its_certificate_and_trust_are_the_ones_named() {
    let old = ClusterCa::new("c1").unwrap();
    let (new, rotation) = rotation_of(&old);
    let next = NextRoot::from_pem(
        old.certificate(),
        &rotation.to.cert_pem,
        &rotation.cross_signed_pem,
    )
    .unwrap();
    let before = CaTarget {
        root: old.digest(),
        next: None,
    };
    let during = CaTarget {
        root: old.digest(),
        next: Some(new.digest()),
    };
    let after = CaTarget {
        root: new.digest(),
        next: None,
    };
    let trust_old = crate::pki::CaTrust::new(old.certificate().clone());
    let trust_both = crate::pki::CaTrust::rotating(old.certificate().clone(), next).unwrap();
    let trust_new = crate::pki::CaTrust::new(new.certificate().clone());

    let unrotated = identity(&old, trust_old.clone());
    assert!(!ca_change_due(&unrotated, &before));
    assert!(ca_change_due(&unrotated, &during));
    // An old certificate while trusting both: still to renew.
    assert!(ca_change_due(&identity(&old, trust_both.clone()), &during));
    let rotated = identity(&new, trust_both);
    assert!(!ca_change_due(&rotated, &during));
    assert!(
        ca_change_due(&rotated, &after),
        "the old root is to be dropped"
    );
    assert_eq!(
        tls_of(&rotated),
        NodeTls {
            cert_issuer: new.digest(),
            trust_root: old.digest(),
            trust_next: Some(new.digest()),
        }
    );
    let done = identity(&new, trust_new);
    assert!(!ca_change_due(&done, &after));
    assert_eq!(
        tls_of(&done),
        NodeTls {
            cert_issuer: new.digest(),
            trust_root: new.digest(),
            trust_next: None,
        }
    );
}
