//! Certificates for real TLS handshakes in tests, made by rcgen: a CA, a server
//! certificate for the given names (IP addresses become IP SANs) and a client
//! certificate, written as PEM files into a temp dir.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct Pki {
    dir: tempfile::TempDir,
    /// The client certificate, DER (what a server sees of its caller).
    pub client_der: Vec<u8>,
}

impl Pki {
    /// `ca.pem`, `server.pem` + `server.key` for `server_names`, `client.pem` +
    /// `client.key` for `checkout.internal`.
    pub fn new(server_names: &[&str]) -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: String| {
            std::fs::write(dir.path().join(name), text).expect("write a PEM file")
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Names of their own: OpenSSL (Redis) takes a certificate whose subject equals
        // its issuer's for self-signed, and refuses it as signed by an unknown CA.
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "streamscore test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        write("ca.pem", ca.pem());
        let issuer = Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let names: Vec<String> = server_names.iter().map(|n| n.to_string()).collect();
        let mut server_params = CertificateParams::new(names).expect("server params");
        server_params
            .distinguished_name
            .push(DnType::CommonName, "streamscore test server");
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server certificate");
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        let client_key = KeyPair::generate().expect("client key");
        let mut client_params =
            CertificateParams::new(vec!["checkout.internal".to_string()]).expect("client params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, "checkout.internal");
        let client = client_params
            .signed_by(&client_key, &issuer)
            .expect("client certificate");
        write("client.pem", client.pem());
        write("client.key", client_key.serialize_pem());
        Pki {
            client_der: client.der().to_vec(),
            dir,
        }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}
