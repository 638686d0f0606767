/*
 * A real EST client for the end-to-end tests: Bouncy Castle's EST client
 * (Debian's libbcpkix-java) driving a running estgated. Run as a single-file
 * program, no build step:
 *
 *   CP=/usr/share/java/bcpkix.jar:/usr/share/java/bcprov.jar:/usr/share/java/bcutil.jar
 *   java -cp $CP:/usr/share/java/bctls.jar \
 *       hsm-tests/java/EstClient.java COMMAND --server localhost:PORT [--label L] --trust CA.pem ...
 *
 * Commands:
 *   cacerts  --out FILE                      the CA certificates, PEM
 *   csrattrs                                 prints the attribute OIDs, or "none"
 *   enroll   --user U --pass-file F --cn CN [--dns NAME] --key-out K --cert-out C [--pop]
 *            (a new P-256 key, simpleenroll with HTTP Basic; --pop: simpleEnrollPoP, the
 *            TLS channel binding in the CSR's challengePassword, over Bouncy Castle's own
 *            TLS (BCJSSE, Debian's libbctls-java, on the class path))
 *   reenroll --key K --cert C --cert-out C2 [--rekey --key-out K2]
 *            (simplereenroll authenticated by the client certificate C)
 *   serverkeygen --user U --pass-file F --cn CN [--dns NAME] [--key-type ec|rsa]
 *            --key-out K --cert-out C
 *            (serverkeygen with HTTP Basic; the CSR's own key is P-256 or RSA-2048;
 *            writes the server's key (PKCS#8) and certificate, and checks that
 *            they belong together: prints "key matches certificate")
 * Exit status 0 on success; on failure the HTTP status (if any) and message go
 * to stderr and the status is 1.
 */
import java.io.FileInputStream;
import java.io.FileReader;
import java.io.FileWriter;
import java.math.BigInteger;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.nio.file.attribute.PosixFilePermissions;
import java.security.KeyPair;
import java.security.KeyPairGenerator;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Security;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.security.cert.TrustAnchor;
import java.security.cert.X509Certificate;
import java.security.spec.ECGenParameterSpec;
import java.util.HashMap;
import java.util.Arrays;
import java.util.HashSet;
import java.util.Map;
import java.util.Set;
import javax.net.ssl.KeyManagerFactory;
import javax.security.auth.x500.X500Principal;

import org.bouncycastle.asn1.ASN1ObjectIdentifier;
import org.bouncycastle.asn1.pkcs.PKCSObjectIdentifiers;
import org.bouncycastle.asn1.pkcs.PrivateKeyInfo;
import org.bouncycastle.asn1.x509.Extension;
import org.bouncycastle.asn1.x509.ExtensionsGenerator;
import org.bouncycastle.asn1.x509.GeneralName;
import org.bouncycastle.asn1.x509.GeneralNames;
import org.bouncycastle.cert.X509CertificateHolder;
import org.bouncycastle.cert.jcajce.JcaX509CertificateConverter;
import org.bouncycastle.crypto.params.AsymmetricKeyParameter;
import org.bouncycastle.crypto.params.ECPrivateKeyParameters;
import org.bouncycastle.crypto.params.ECPublicKeyParameters;
import org.bouncycastle.crypto.params.Ed25519PrivateKeyParameters;
import org.bouncycastle.crypto.params.Ed25519PublicKeyParameters;
import org.bouncycastle.crypto.params.RSAKeyParameters;
import org.bouncycastle.crypto.params.RSAPrivateCrtKeyParameters;
import org.bouncycastle.crypto.util.PrivateKeyFactory;
import org.bouncycastle.crypto.util.PublicKeyFactory;
import org.bouncycastle.est.CACertsResponse;
import org.bouncycastle.est.CSRRequestResponse;
import org.bouncycastle.est.ESTAuth;
import org.bouncycastle.est.ESTException;
import org.bouncycastle.est.ESTService;
import org.bouncycastle.est.EnrollmentResponse;
import org.bouncycastle.est.jcajce.ChannelBindingProvider;
import org.bouncycastle.est.jcajce.JcaJceUtils;
import org.bouncycastle.est.jcajce.JsseDefaultHostnameAuthorizer;
import org.bouncycastle.est.jcajce.JsseESTServiceBuilder;
import org.bouncycastle.jce.provider.BouncyCastleProvider;
import org.bouncycastle.jsse.BCSSLSocket;
import org.bouncycastle.jsse.provider.BouncyCastleJsseProvider;
import org.bouncycastle.openssl.PEMKeyPair;
import org.bouncycastle.openssl.PEMParser;
import org.bouncycastle.openssl.jcajce.JcaPEMKeyConverter;
import org.bouncycastle.openssl.jcajce.JcaPEMWriter;
import org.bouncycastle.openssl.jcajce.JcaPKCS8Generator;
import org.bouncycastle.operator.ContentSigner;
import org.bouncycastle.operator.jcajce.JcaContentSignerBuilder;
import org.bouncycastle.pkcs.PKCS10CertificationRequest;
import org.bouncycastle.pkcs.PKCS10CertificationRequestBuilder;
import org.bouncycastle.pkcs.jcajce.JcaPKCS10CertificationRequestBuilder;
import org.bouncycastle.util.io.pem.PemObject;

public final class EstClient {
    private final Map<String, String> opts = new HashMap<>();

    private EstClient(String[] args, int from) {
        for (int i = from; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("--"))
                throw new IllegalArgumentException("unexpected argument " + a);
            if (a.equals("--rekey") || a.equals("--pop")) {
                opts.put(a.substring(2), "yes");
            } else if (i + 1 < args.length) {
                opts.put(a.substring(2), args[++i]);
            } else {
                throw new IllegalArgumentException(a + " needs a value");
            }
        }
    }

    private String need(String name) {
        String v = opts.get(name);
        if (v == null)
            throw new IllegalArgumentException("--" + name + " is required");
        return v;
    }

    private Set<TrustAnchor> anchors() throws Exception {
        Set<TrustAnchor> set = new HashSet<>();
        try (FileInputStream in = new FileInputStream(need("trust"))) {
            for (Certificate c : CertificateFactory.getInstance("X.509").generateCertificates(in))
                set.add(new TrustAnchor((X509Certificate) c, null));
        }
        return set;
    }

    private ESTService service(KeyManagerFactory kmf) throws Exception {
        JsseESTServiceBuilder b = new JsseESTServiceBuilder(need("server"),
                JcaJceUtils.getCertPathTrustManager(anchors(), null));
        b.withHostNameAuthorizer(new JsseDefaultHostnameAuthorizer(null));
        b.withTLSVersion(opts.getOrDefault("tls", "TLSv1.3"));
        b.withTimeout(20000);
        if (kmf != null)
            b.withKeyManagers(kmf.getKeyManagers());
        if (opts.containsKey("pop")) {
            b.withProvider(new BouncyCastleJsseProvider());
            b.withChannelBindingProvider(new Binding());
        }
        if (opts.containsKey("label"))
            b.withLabel(opts.get("label"));
        return b.build();
    }

    /*
     * What simpleEnrollPoP puts in the challengePassword: the channel binding it asks for,
     * "tls-unique", from BCJSSE's connection. That is TLS 1.2's; for TLS 1.3 (RFC 9266's
     * "tls-exporter") BCJSSE 1.72 throws "Export of key material only available from
     * notifyHandshakeComplete()" once the handshake is over.
     */
    private static final class Binding implements ChannelBindingProvider {
        public boolean canAccessChannelBinding(Socket s) {
            return s instanceof BCSSLSocket;
        }

        public byte[] getChannelBinding(Socket s, String type) {
            return ((BCSSLSocket) s).getConnection().getChannelBinding(type);
        }
    }

    private static KeyPair newKey() throws Exception {
        KeyPairGenerator g = KeyPairGenerator.getInstance("EC");
        g.initialize(new ECGenParameterSpec("secp256r1"));
        return g.generateKeyPair();
    }

    private static PKCS10CertificationRequest csr(KeyPair kp, X500Principal subject, GeneralNames sans)
            throws Exception {
        return csr(kp, subject, sans, "SHA256withECDSA");
    }

    private static PKCS10CertificationRequest csr(KeyPair kp, X500Principal subject, GeneralNames sans,
            String sigAlg) throws Exception {
        PKCS10CertificationRequestBuilder rb = new JcaPKCS10CertificationRequestBuilder(subject,
                kp.getPublic());
        if (sans != null) {
            ExtensionsGenerator eg = new ExtensionsGenerator();
            eg.addExtension(Extension.subjectAlternativeName, false, sans);
            rb.addAttribute(PKCSObjectIdentifiers.pkcs_9_at_extensionRequest, eg.generate());
        }
        ContentSigner signer = new JcaContentSignerBuilder(sigAlg).build(kp.getPrivate());
        return rb.build(signer);
    }

    private static void writePem(String path, Object o) throws Exception {
        try (JcaPEMWriter w = new JcaPEMWriter(new FileWriter(path))) {
            w.writeObject(o);
        }
    }

    private static X509Certificate toX509(X509CertificateHolder h) throws Exception {
        return new JcaX509CertificateConverter().getCertificate(h);
    }

    private X509CertificateHolder issued(EnrollmentResponse r) throws Exception {
        if (!r.isCompleted())
            throw new IllegalStateException("server asked to retry after " + r.getNotBefore());
        X509CertificateHolder[] certs = ESTService.storeToArray(r.getStore());
        if (certs.length == 0)
            throw new IllegalStateException("no certificate in the response");
        return certs[0];
    }

    private int cacerts() throws Exception {
        CACertsResponse r = service(null).getCACerts();
        X509CertificateHolder[] certs = ESTService.storeToArray(r.getCertificateStore());
        try (JcaPEMWriter w = new JcaPEMWriter(new FileWriter(need("out")))) {
            for (X509CertificateHolder h : certs)
                w.writeObject(h);
        }
        System.out.println(certs.length + " certificate(s)");
        return certs.length > 0 ? 0 : 1;
    }

    private int csrattrs() throws Exception {
        CSRRequestResponse r = service(null).getCSRAttributes();
        if (!r.hasAttributesResponse()) {
            System.out.println("none");
            return 0;
        }
        for (ASN1ObjectIdentifier oid : r.getAttributesResponse().getRequirements())
            System.out.println(oid.getId());
        return 0;
    }

    private int enroll() throws Exception {
        String pass = new String(Files.readAllBytes(Paths.get(need("pass-file"))),
                StandardCharsets.UTF_8).split("\r?\n")[0];
        KeyPair kp = newKey();
        GeneralNames sans = opts.containsKey("dns")
                ? new GeneralNames(new GeneralName(GeneralName.dNSName, opts.get("dns")))
                : null;
        PKCS10CertificationRequest req = csr(kp, new X500Principal("CN=" + need("cn")), sans);
        /*
         * Credentials on the first request, as most devices send them. (Bouncy
         * Castle 1.72's HttpAuth, which waits for the 401, fails reading that
         * 401's body with "Stream closed before limit fully read"; curl reads
         * the same answer without trouble.)
         */
        String basic = java.util.Base64.getEncoder().encodeToString(
                (need("user") + ":" + pass).getBytes(StandardCharsets.UTF_8));
        ESTAuth auth = b -> b.setHeader("Authorization", "Basic " + basic);
        EnrollmentResponse r;
        if (opts.containsKey("pop")) {
            PKCS10CertificationRequestBuilder rb = new JcaPKCS10CertificationRequestBuilder(
                    new X500Principal("CN=" + need("cn")), kp.getPublic());
            if (sans != null) {
                ExtensionsGenerator eg = new ExtensionsGenerator();
                eg.addExtension(Extension.subjectAlternativeName, false, sans);
                rb.addAttribute(PKCSObjectIdentifiers.pkcs_9_at_extensionRequest, eg.generate());
            }
            r = service(null).simpleEnrollPoP(false, rb,
                    new JcaContentSignerBuilder("SHA256withECDSA").build(kp.getPrivate()), auth);
        } else {
            r = service(null).simpleEnroll(false, req, auth);
        }
        X509CertificateHolder cert = issued(r);
        writePem(need("key-out"), new JcaPKCS8Generator(kp.getPrivate(), null));
        writePem(need("cert-out"), cert);
        System.out.println("issued serial " + cert.getSerialNumber().toString(16));
        return 0;
    }

    private int reenroll() throws Exception {
        PrivateKey oldKey;
        try (PEMParser p = new PEMParser(new FileReader(need("key")))) {
            Object o = p.readObject();
            JcaPEMKeyConverter conv = new JcaPEMKeyConverter();
            /* An "EC PRIVATE KEY" may come without its public half: take the private part. */
            oldKey = o instanceof PEMKeyPair
                    ? conv.getPrivateKey(((PEMKeyPair) o).getPrivateKeyInfo())
                    : conv.getPrivateKey((org.bouncycastle.asn1.pkcs.PrivateKeyInfo) o);
        }
        X509Certificate cur;
        try (FileInputStream in = new FileInputStream(need("cert"))) {
            cur = (X509Certificate) CertificateFactory.getInstance("X.509").generateCertificate(in);
        }
        KeyStore ks = KeyStore.getInstance("PKCS12");
        ks.load(null, null);
        char[] pw = "transient".toCharArray();
        ks.setKeyEntry("client", oldKey, pw, new Certificate[] {cur});
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, pw);

        KeyPair kp = opts.containsKey("rekey") ? newKey() : new KeyPair(cur.getPublicKey(), oldKey);
        X509CertificateHolder holder = new X509CertificateHolder(cur.getEncoded());
        GeneralNames sans = null;
        if (holder.getExtension(Extension.subjectAlternativeName) != null)
            sans = GeneralNames.getInstance(
                    holder.getExtension(Extension.subjectAlternativeName).getParsedValue());
        PKCS10CertificationRequest req = csr(kp, cur.getSubjectX500Principal(), sans);
        EnrollmentResponse r = service(kmf).simpleEnroll(true, req, null);
        X509CertificateHolder cert = issued(r);
        writePem(need("cert-out"), cert);
        if (opts.containsKey("rekey"))
            writePem(need("key-out"), new JcaPKCS8Generator(kp.getPrivate(), null));
        BigInteger serial = cert.getSerialNumber();
        System.out.println("reissued serial " + serial.toString(16));
        return 0;
    }

    /*
     * The public half computed from the private key itself (not from a public
     * key the PKCS#8 may carry beside it) against the certificate's key.
     */
    private static void checkKeyMatches(PrivateKeyInfo pki, X509CertificateHolder cert)
            throws Exception {
        AsymmetricKeyParameter priv = PrivateKeyFactory.createKey(pki);
        AsymmetricKeyParameter pub = PublicKeyFactory.createKey(cert.getSubjectPublicKeyInfo());
        boolean same;

        if (priv instanceof RSAPrivateCrtKeyParameters && pub instanceof RSAKeyParameters) {
            RSAPrivateCrtKeyParameters k = (RSAPrivateCrtKeyParameters) priv;
            RSAKeyParameters p = (RSAKeyParameters) pub;
            same = k.getModulus().equals(p.getModulus())
                    && k.getPublicExponent().equals(p.getExponent());
        } else if (priv instanceof ECPrivateKeyParameters && pub instanceof ECPublicKeyParameters) {
            ECPrivateKeyParameters k = (ECPrivateKeyParameters) priv;
            ECPublicKeyParameters p = (ECPublicKeyParameters) pub;
            same = k.getParameters().getCurve().equals(p.getParameters().getCurve())
                    && k.getParameters().getG().multiply(k.getD()).normalize().equals(p.getQ());
        } else if (priv instanceof Ed25519PrivateKeyParameters
                && pub instanceof Ed25519PublicKeyParameters) {
            same = Arrays.equals(((Ed25519PrivateKeyParameters) priv).generatePublicKey().getEncoded(),
                    ((Ed25519PublicKeyParameters) pub).getEncoded());
        } else {
            throw new IllegalStateException("the returned key (" + pki.getPrivateKeyAlgorithm()
                    .getAlgorithm().getId() + ") and the certificate's key are not of one known type");
        }
        if (!same)
            throw new IllegalStateException("the returned key does not match the certificate");
        System.out.println("key matches certificate");
    }

    private int serverkeygen() throws Exception {
        String pass = new String(Files.readAllBytes(Paths.get(need("pass-file"))),
                StandardCharsets.UTF_8).split("\r?\n")[0];
        String type = opts.getOrDefault("key-type", "ec");
        KeyPair kp;
        String sigAlg;
        if (type.equals("ec")) {
            kp = newKey();
            sigAlg = "SHA256withECDSA";
        } else if (type.equals("rsa")) {
            KeyPairGenerator g = KeyPairGenerator.getInstance("RSA");
            g.initialize(2048);
            kp = g.generateKeyPair();
            sigAlg = "SHA256withRSA";
        } else {
            throw new IllegalArgumentException("--key-type " + type + ": ec or rsa");
        }
        GeneralNames sans = opts.containsKey("dns")
                ? new GeneralNames(new GeneralName(GeneralName.dNSName, opts.get("dns")))
                : null;
        PKCS10CertificationRequest req = csr(kp, new X500Principal("CN=" + need("cn")), sans, sigAlg);
        /* Credentials on the first request, as in enroll (BC 1.72's HttpAuth fails on the 401). */
        String basic = java.util.Base64.getEncoder().encodeToString(
                (need("user") + ":" + pass).getBytes(StandardCharsets.UTF_8));
        EnrollmentResponse r = service(null).simpleEnrollWithServersideCreation(req,
                b -> b.setHeader("Authorization", "Basic " + basic));
        X509CertificateHolder cert = issued(r);
        PrivateKeyInfo pki = r.getPrivateKeyInfo();
        if (pki == null)
            throw new IllegalStateException("no private key in the response");
        checkKeyMatches(pki, cert);
        /* A private key: owner-only from creation, never briefly world-readable. */
        Files.deleteIfExists(Paths.get(need("key-out")));
        Files.createFile(Paths.get(need("key-out")),
                PosixFilePermissions.asFileAttribute(PosixFilePermissions.fromString("rw-------")));
        writePem(need("key-out"), new PemObject("PRIVATE KEY", pki.getEncoded()));
        writePem(need("cert-out"), cert);
        System.out.println("issued serial " + cert.getSerialNumber().toString(16));
        return 0;
    }

    public static void main(String[] args) {
        int rc;

        Security.addProvider(new BouncyCastleProvider());
        try {
            if (args.length == 0)
                throw new IllegalArgumentException(
                        "usage: EstClient cacerts|csrattrs|enroll|reenroll|serverkeygen ...");
            EstClient c = new EstClient(args, 1);
            switch (args[0]) {
            case "cacerts":
                rc = c.cacerts();
                break;
            case "csrattrs":
                rc = c.csrattrs();
                break;
            case "enroll":
                rc = c.enroll();
                break;
            case "reenroll":
                rc = c.reenroll();
                break;
            case "serverkeygen":
                rc = c.serverkeygen();
                break;
            default:
                throw new IllegalArgumentException("unknown command " + args[0]);
            }
        } catch (ESTException e) {
            System.err.println("EstClient: HTTP " + e.getStatusCode() + ": " + e.getMessage());
            rc = 1;
        } catch (Exception e) {
            System.err.println("EstClient: " + e);
            rc = 1;
        }
        System.exit(rc);
    }
}
