"""Real directory servers for the tests and the benchmark: Samba AD DC and OpenLDAP slapd.

Both run as child processes on 127.0.0.1 with certificates from a CA generated here, seeded
with the users below (every account state the LDAP source must handle, nested groups, names
that need escaping). Nothing here is a fake: the bridge talks to them over LDAPS.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HERE = Path(__file__).resolve().parent
REALM = "CORP.EXAMPLE.TEST"
NETBIOS = "CORP"
SAMBA_BASE = "DC=corp,DC=example,DC=test"
SLAPD_BASE = "dc=example,dc=test"
SYSTEM_PYTHON = "/usr/bin/python3"


def random_password() -> str:
    """A password AD's complexity rules accept, different on every run."""
    return "Pw-" + secrets.token_urlsafe(12) + "9a!"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll until something accepts on 127.0.0.1:port (bounded; fails fast if it died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class TestCA:
    """A CA generated for this run and one server certificate for 127.0.0.1 / localhost."""

    __test__ = False
    directory: Path
    ca_file: Path = field(init=False)
    cert_file: Path = field(init=False)
    key_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.pem"
        self.cert_file = self.directory / "server.pem"
        self.key_file = self.directory / "server.key"
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bridge test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([
                    x509.DNSName("localhost"),
                    x509.DNSName("dc1.corp.example.test"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        os.chmod(self.key_file, 0o600)

    def other_ca(self) -> Path:
        """A second, unrelated CA certificate (for 'wrong CA' tests)."""
        return TestCA(self.directory / "other").ca_file


@dataclass
class DirectoryUser:
    """A seeded user: login name, password, and what the tests expect of them."""

    sam: str
    password: str
    given: str | None = None
    sn: str | None = None
    mail: str | None = None
    state: str = "ok"
    cn: str | None = None


def samba_users() -> dict[str, DirectoryUser]:
    """The users seeded into Samba; passwords are fresh on every run."""
    users = [
        DirectoryUser(
            "alice", random_password(), "Alice", "Smith", "alice.smith@mail.example.test"
        ),
        DirectoryUser("bob", random_password(), "Bob", "Jones", "bob@corp.example.test"),
        DirectoryUser("dora", random_password(), "Dora", "Disabled", state="disabled"),
        DirectoryUser("mike", random_password(), "Mike", "Mustchange", state="must_change"),
        DirectoryUser("eve", random_password(), "Eve", "Expired", state="expired_account"),
        DirectoryUser("pete", random_password(), "Pete", "Oldpass", state="password_expired"),
        DirectoryUser("wendy", random_password(), "Wendy", "Warned", state="expires_soon"),
        DirectoryUser("larry", random_password(), "Larry", "Lockout"),
        DirectoryUser("ivan", random_password(), "Ivan", "Injected"),
        DirectoryUser("carl", random_password(), "Carl", "Consistency"),
        DirectoryUser("fran", random_password(), "Fran", "Failover"),
        DirectoryUser("pat", random_password(), "Pat", "O'Brien", cn="O'Brien, Pat (IT)* \\Zoë"),
        DirectoryUser("chris", random_password(), "Chris", "Changer"),
        DirectoryUser("sally", random_password(), "Sally", "Smartlockout"),
        DirectoryUser("mona", random_password(), "Mona", "Spelling", "m.s@mail.example.test"),
        DirectoryUser("nina", random_password(), "Nina", "Spelling", "n.s@mail.example.test"),
        DirectoryUser("svc-bridge", random_password(), None, None),
    ]
    return {u.sam: u for u in users}


SAMBA_GROUPS = [
    {"name": "All Staff", "members": ["Staff"]},
    {"name": "Staff", "members": ["Engineering", "bob"]},
    {"name": "Engineering", "members": ["alice", "fran"]},
    {"name": "R&D (Lab)", "members": ["pat"]},
    {"name": "short-expiry", "members": ["wendy"]},
]
CONSISTENCY_GUID = "00112233445566778899aabbccddeeff"


@dataclass
class SambaDC:
    """A Samba AD domain controller provisioned into a directory, running in single mode."""

    directory: Path
    ca: TestCA
    users: dict[str, DirectoryUser] = field(default_factory=samba_users)
    process: subprocess.Popen[bytes] | None = None
    ldaps_port: int = 636
    ldap_port: int = 389

    @property
    def smb_conf(self) -> Path:
        """The DC's configuration file."""
        return self.directory / "etc" / "smb.conf"

    @property
    def url(self) -> str:
        """The DC's LDAPS URL."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def service_dn(self) -> str:
        """The service account's DN (its CN is the login name: no names given)."""
        return f"CN=svc-bridge,CN=Users,{SAMBA_BASE}"

    def provision(self) -> None:
        """samba-tool domain provision into the directory, TLS with the test CA, then seed."""
        d = self.directory
        for port in (self.ldap_port, self.ldaps_port):
            # Samba's LDAP ports are fixed: a second DC on this machine would shadow ours.
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise RuntimeError(f"127.0.0.1:{port} is taken: is another Samba running?")
        for sub in ("run", "lock", "state", "cache", "wb", "ntp", "log"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "interfaces": "127.0.0.1",
            "bind interfaces only": "yes",
            "pid directory": d / "run",
            "lock directory": d / "lock",
            "state directory": d / "state",
            "cache directory": d / "cache",
            "log file": d / "log" / "log.%m",
            "winbindd socket directory": d / "wb",
            "ntp signd socket directory": d / "ntp",
            "server services": "ldap, cldap",
            "tls enabled": "yes",
            "tls keyfile": self.ca.key_file,
            "tls certfile": self.ca.cert_file,
            "tls cafile": self.ca.ca_file,
        }
        command = [
            "samba-tool", "domain", "provision", f"--targetdir={d}", f"--realm={REALM}",
            f"--domain={NETBIOS}", "--server-role=dc", "--dns-backend=NONE", "--use-rfc2307",
            "--host-name=DC1", "--host-ip=127.0.0.1", f"--adminpass={random_password()}",
        ] + [f"--option={k} = {v}" for k, v in options.items()]
        _run(command, timeout=180)
        _run(
            ["samba-tool", "domain", "passwordsettings", "set", "-s", str(self.smb_conf),
             "--account-lockout-threshold=3", "--account-lockout-duration=1",
             "--reset-account-lockout-after=1", "--min-pwd-age=0", "--max-pwd-age=42",
             "--history-length=24", "--complexity=on"],
            timeout=60,
        )
        seed = {
            "users": [
                {
                    "sam": u.sam,
                    "password": u.password,
                    "given": u.given,
                    "sn": u.sn,
                    "mail": u.mail,
                    "disabled": u.state == "disabled",
                    "must_change": u.state == "must_change",
                    "expired_account": u.state == "expired_account",
                    "password_age_days": 90 if u.state == "password_expired" else None,
                    "consistency_guid": CONSISTENCY_GUID if u.sam == "carl" else None,
                    "cn": u.cn,
                }
                for u in self.users.values()
            ],
            "groups": SAMBA_GROUPS,
            "psos": [{"name": "expire-soon", "max_age_days": 10, "applies_to": "short-expiry"}],
        }
        _run([SYSTEM_PYTHON, str(HERE / "samba_seed.py"), str(self.smb_conf)],
             input=json.dumps(seed).encode(), timeout=120)

    def start(self, timeout: float = 60) -> None:
        """Start `samba -M single -F` and wait until LDAPS accepts connections."""
        log = (self.directory / "samba.out").open("ab")
        self.process = subprocess.Popen(
            ["samba", "-s", str(self.smb_conf), "-M", "single", "-F", "--debuglevel=0"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.ldaps_port, self.process, timeout)

    def stop(self) -> None:
        """Stop the DC (SIGTERM, then SIGKILL), resuming it first if it was stopped."""
        _stop(self.process)
        self.process = None


SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
modulepath /usr/lib/ldap
moduleload back_mdb
moduleload memberof
pidfile {dir}/slapd.pid
TLSCACertificateFile {ca}
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
access to attrs=userPassword
  by dn.exact="cn=bridge-svc,ou=services,{base}" none
  by anonymous auth
  by self write
  by * none
access to *
  by dn.exact="cn=bridge-svc,ou=services,{base}" read
  by self read
  by * none
database mdb
maxsize 104857600
suffix "{base}"
rootdn "cn=admin,{base}"
rootpw {rootpw}
directory {dir}/db
index objectClass eq
index uid,mail,member,memberOf eq
overlay memberof
"""


def slapd_users() -> dict[str, DirectoryUser]:
    """The users seeded into slapd."""
    users = [
        DirectoryUser("alice", random_password(), "Alice", "Smith", "alice@example.test"),
        DirectoryUser("bob", random_password(), "Bob", "Jones", "bob@example.test"),
        DirectoryUser("pat", random_password(), "Pat, (IT)*", "O'Brien", "pat@example.test"),
        DirectoryUser("ivan", random_password(), "Ivan", "Injected", "ivan@example.test"),
        DirectoryUser("chris", random_password(), "Chris", "Changer", "chris@example.test"),
    ]
    return {u.sam: u for u in users}


@dataclass
class Slapd:
    """An OpenLDAP slapd with an mdb database, LDAPS and plain LDAP on 127.0.0.1."""

    directory: Path
    ca: TestCA
    users: dict[str, DirectoryUser] = field(default_factory=slapd_users)
    service_password: str = field(default_factory=random_password)
    root_password: str = field(default_factory=random_password)
    ldap_port: int = field(default_factory=free_port)
    ldaps_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The LDAPS URL."""
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def user_dn(self, user: DirectoryUser) -> str:
        """Users live under ou=people; their RDN is their cn (which may need escaping)."""
        return f"uid={user.sam},ou=people,{SLAPD_BASE}"

    def service_dn(self) -> str:
        """The read-only service account."""
        return f"cn=bridge-svc,ou=services,{SLAPD_BASE}"

    def configure(self) -> None:
        """Write slapd.conf and an empty database directory."""
        (self.directory / "db").mkdir(parents=True, exist_ok=True)
        (self.directory / "slapd.conf").write_text(
            SLAPD_CONF.format(
                dir=self.directory, ca=self.ca.ca_file, cert=self.ca.cert_file,
                key=self.ca.key_file, base=SLAPD_BASE, rootpw=self.root_password,
            )
        )

    def start(self, timeout: float = 30) -> None:
        """Start slapd in the foreground (own process group) and wait for both ports."""
        log = (self.directory / "slapd.out").open("ab")
        self.process = subprocess.Popen(
            ["slapd", "-d", "0", "-f", str(self.directory / "slapd.conf"), "-h",
             f"ldap://127.0.0.1:{self.ldap_port}/ ldaps://127.0.0.1:{self.ldaps_port}/"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.ldap_port, self.process, timeout)
        wait_for_port(self.ldaps_port, self.process, timeout)

    def stop(self) -> None:
        """Stop slapd."""
        _stop(self.process)
        self.process = None

    def seed(self) -> None:
        """Add the tree with ldapadd (so the memberOf overlay maintains memberOf)."""
        base = SLAPD_BASE
        people = f"ou=people,{base}"
        groups = f"ou=groups,{base}"
        entries = [
            f"dn: {base}\nobjectClass: dcObject\nobjectClass: organization\n"
            "dc: example\no: Example",
            f"dn: ou=people,{base}\nobjectClass: organizationalUnit\nou: people",
            f"dn: ou=groups,{base}\nobjectClass: organizationalUnit\nou: groups",
            f"dn: ou=services,{base}\nobjectClass: organizationalUnit\nou: services",
            f"dn: {self.service_dn()}\nobjectClass: organizationalRole\n"
            f"objectClass: simpleSecurityObject\ncn: bridge-svc\n"
            f"userPassword: {self.service_password}",
        ]
        for user in self.users.values():
            entries.append(
                f"dn: {self.user_dn(user)}\nobjectClass: inetOrgPerson\nuid: {user.sam}\n"
                f"cn:: {_b64(f'{user.given} {user.sn}')}\nsn:: {_b64(user.sn or user.sam)}\n"
                f"givenName:: {_b64(user.given or user.sam)}\n"
                f"displayName:: {_b64(f'{user.given} {user.sn}')}\n"
                f"mail: {user.mail}\nuserPassword: {user.password}"
            )
        # Nested: all-staff > staff > engineering > alice; "R&D (Lab)*" holds pat.
        entries += [
            f"dn: cn=engineering,{groups}\nobjectClass: groupOfNames\ncn: engineering\n"
            f"member: uid=alice,{people}",
            f"dn: cn=staff,{groups}\nobjectClass: groupOfNames\ncn: staff\n"
            f"member: cn=engineering,{groups}\nmember: uid=bob,{people}",
            f"dn: cn=all-staff,{groups}\nobjectClass: groupOfNames\ncn: all-staff\n"
            f"member: cn=staff,{groups}",
            f"dn: cn=R&D (Lab)*,{groups}\nobjectClass: groupOfNames\ncn: R&D (Lab)*\n"
            f"member: uid=pat,{people}",
        ]
        ldif = "\n\n".join(entries) + "\n"
        _run(
            ["ldapadd", "-x", "-H", f"ldap://127.0.0.1:{self.ldap_port}", "-D",
             f"cn=admin,{base}", "-y", str(self._root_password_file())],
            input=ldif.encode(), timeout=60,
        )

    def _root_password_file(self) -> Path:
        path = self.directory / "rootpw"
        path.write_text(self.root_password)
        os.chmod(path, 0o600)
        return path


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


def _run(command: list[str], timeout: float, input: bytes | None = None) -> str:
    result = subprocess.run(command, input=input, capture_output=True, timeout=timeout)
    if result.returncode != 0:
        # Print the tool's own words; commands hold no secrets except --adminpass, cut here.
        shown = [c if not c.startswith("--adminpass") else "--adminpass=***" for c in command]
        raise RuntimeError(
            f"{shown[0]} failed ({result.returncode}): "
            f"{result.stderr.decode(errors='replace')[-2000:]}"
        )
    return result.stdout.decode(errors="replace")


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGCONT)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


def samba_available() -> bool:
    """True when samba-tool, samba and Samba's Python bindings are installed."""
    return bool(shutil.which("samba-tool") and shutil.which("samba")) and Path(
        SYSTEM_PYTHON
    ).exists()
