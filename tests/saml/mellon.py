"""Apache httpd with mod_auth_mellon as a SAML service provider, run as a private instance.

Debian's `apache2` and `libapache2-mod-auth-mellon` (lasso underneath) protect /protected/ on
127.0.0.1; the page is a server-side include that prints the environment mellon gives the
application (MELLON_* variables, REMOTE_USER). Nothing of the system's Apache is used: the
instance has its own ServerRoot, config, pid file, logs and a port, and runs in the foreground.
"""

from __future__ import annotations

import html
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from tests.saml.peers import make_keypair
from tests.support import free_port, stop

APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
MAIL = "urn:oid:0.9.2342.19200300.100.1.3"
GROUPS = "urn:oid:1.3.6.1.4.1.5923.1.5.1.1"
# The user Apache's children switch to when the parent runs as root (it refuses to serve as root).
CHILD_USER = "www-data"
READY_SECONDS = 20.0

PROTECTED_PAGE = """<!DOCTYPE html>
<html><head><title>Protected</title></head><body>
<h1>Signed in through mod_auth_mellon</h1>
<pre id="env">
<!--#printenv -->
</pre>
</body></html>
"""
LOGGED_OUT_PAGE = "<!DOCTYPE html><html><body><h1 id='done'>Signed out</h1></body></html>\n"

# Only what the protected page needs; mod_unixd, mod_so and mod_log_config are built in.
HTTPD_CONF = """\
ServerRoot "{root}"
ServerName 127.0.0.1:{port}
Listen 127.0.0.1:{port}
PidFile "{root}/run/httpd.pid"
DefaultRuntimeDir "{root}/run"
ErrorLog "{root}/logs/error.log"
LogLevel warn
{user_lines}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authn_core_module {modules}/mod_authn_core.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule authz_user_module {modules}/mod_authz_user.so
LoadModule mime_module {modules}/mod_mime.so
LoadModule dir_module {modules}/mod_dir.so
LoadModule include_module {modules}/mod_include.so
LoadModule auth_mellon_module {modules}/mod_auth_mellon.so

# One child process: mellon keeps its sessions in shared memory, so this is about noise only.
StartServers 1
ServerLimit 1
ThreadsPerChild 16
MaxRequestWorkers 16
MinSpareThreads 1
MaxSpareThreads 16

MellonLockFile "{root}/run/mellon.lock"
TypesConfig /dev/null
AddType text/html .html .shtml
DocumentRoot "{root}/htdocs"
DirectoryIndex index.shtml index.html
<Directory "{root}/htdocs">
    Options +Includes
    AddOutputFilter INCLUDES .shtml
    Require all granted
</Directory>

<Location />
    MellonEnable info
    MellonEndpointPath /mellon
    MellonSPentityId "{base}/mellon/metadata"
    MellonSPPrivateKeyFile "{root}/mellon/sp.key"
    MellonSPCertFile "{root}/mellon/sp.crt"
    MellonIdPMetadataFile "{root}/mellon/idp-metadata.xml"
    # Chromium drops SameSite=None cookies that are not Secure, and mellon's cookie test needs
    # SameSite=None to survive the bridge's cross-site POST; loopback counts as a secure origin.
    MellonSecureCookie On
    MellonSetEnv mail {mail}
    MellonSetEnv groups {groups}
    MellonMergeEnvVars On ";"
</Location>

<Location /protected>
    AuthType Mellon
    MellonEnable auth
    Require valid-user
</Location>
"""


@dataclass
class MellonSp:
    """A running Apache + mod_auth_mellon service provider on 127.0.0.1."""

    name = "mellon"
    base: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def entity_id(self) -> str:
        """mellon's entityID (its metadata URL)."""
        return self.base + "/mellon/metadata"

    @property
    def protected_url(self) -> str:
        """The page mellon protects."""
        return self.base + "/protected/"

    @property
    def logged_out_url(self) -> str:
        """An unprotected page to return to after logout."""
        return self.base + "/logged-out.html"

    def metadata(self) -> str:
        """The SP metadata mellon generates from its configuration."""
        response = requests.get(self.entity_id, timeout=10)
        response.raise_for_status()
        return response.text

    def idp_metadata(self) -> str:
        """The IdP metadata mellon was configured with."""
        return (self.root / "mellon" / "idp-metadata.xml").read_text()

    def error_log(self) -> str:
        """Everything Apache and mellon logged so far."""
        path = self.root / "logs" / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def log_position(self) -> int:
        """A mark in the error log; `errors_since` returns what was logged after it."""
        path = self.root / "logs" / "error.log"
        return path.stat().st_size if path.exists() else 0

    def errors_since(self, position: int) -> str:
        """What was logged after a mark (Apache writes each line before it answers)."""
        with (self.root / "logs" / "error.log").open("rb") as log:
            log.seek(position)
            return log.read().decode(errors="replace")


def _apache_user() -> str:
    """The `User`/`Group` lines: only when started as root (otherwise nobody switches users)."""
    if os.geteuid() != 0:
        return ""
    return f"User {CHILD_USER}\nGroup {CHILD_USER}"


def _instance_root(workdir: Path) -> tuple[Path, bool]:
    """Where the instance lives, and whether it must be removed afterwards.

    Apache's children read the page and mellon's IdP metadata as CHILD_USER when the tests run
    as root; pytest's temporary directories are 0700 root, so then the instance gets its own
    private directory owned by that user instead.
    """
    if os.geteuid() != 0:
        root = workdir / "apache"
        root.mkdir(parents=True)
        return root, False
    return Path(tempfile.mkdtemp(prefix="bridge-mellon-")), True


def write_instance(root: Path, port: int, idp_metadata: str) -> Path:
    """Write config, SP key and certificate (made now), IdP metadata and pages; return config."""
    base = f"http://127.0.0.1:{port}"
    for name in ("run", "logs", "mellon", "htdocs/protected"):
        (root / name).mkdir(parents=True, exist_ok=True)
    make_keypair("mellon SP").write(root / "mellon", "sp")
    (root / "mellon" / "idp-metadata.xml").write_text(idp_metadata)
    (root / "htdocs" / "protected" / "index.shtml").write_text(PROTECTED_PAGE)
    (root / "htdocs" / "logged-out.html").write_text(LOGGED_OUT_PAGE)
    config = root / "httpd.conf"
    config.write_text(HTTPD_CONF.format(
        root=root, port=port, base=base, modules=MODULES, user_lines=_apache_user(),
        mail=MAIL, groups=GROUPS,
    ))
    if os.geteuid() == 0:
        account = pwd.getpwnam(CHILD_USER)
        for path in [root, *root.rglob("*")]:
            os.chown(path, account.pw_uid, account.pw_gid)
    return config


def wait_for_mellon(sp: MellonSp, timeout: float = READY_SECONDS) -> None:
    """Poll mellon's metadata endpoint until it answers (bounded), failing fast if Apache died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sp.process.poll() is not None:
            raise RuntimeError(
                f"apache2 exited with {sp.process.returncode}:\n{sp.error_log()[-2000:]}"
            )
        try:
            if requests.get(sp.entity_id, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(
        f"mod_auth_mellon did not answer within {timeout}s:\n{sp.error_log()[-2000:]}"
    )


@contextmanager
def running_mellon(idp_metadata: str, workdir: Path) -> Iterator[MellonSp]:
    """Start `apache2 -DFOREGROUND` with mod_auth_mellon trusting this IdP metadata."""
    root, remove = _instance_root(workdir)
    port = free_port()
    try:
        config = write_instance(root, port, idp_metadata)
        check = subprocess.run([APACHE, "-f", str(config), "-t"], capture_output=True, text=True,
                               timeout=30)
        assert check.returncode == 0, check.stderr
        with (root / "logs" / "stdout.log").open("wb") as output:
            process = subprocess.Popen(
                [APACHE, "-f", str(config), "-DFOREGROUND"],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        sp = MellonSp(f"http://127.0.0.1:{port}", root, process)
        try:
            wait_for_mellon(sp)
            yield sp
        finally:
            stop(process)  # type: ignore[arg-type]
    finally:
        if remove:
            shutil.rmtree(root, ignore_errors=True)


_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_:.\-]*)=(.*)$")


def page_environment(page: str) -> dict[str, str]:
    """The variables the protected page printed (mod_include escapes them as HTML)."""
    match = re.search(r'<pre id="env">(.*?)</pre>', page, re.S)
    assert match, f"not the protected page: {page[:300]}"
    variables: dict[str, str] = {}
    for line in match.group(1).splitlines():
        parsed = _ENV_LINE.match(html.unescape(line))
        if parsed:
            variables[parsed.group(1)] = parsed.group(2)
    return variables


def mellon_view(page: str) -> dict[str, Any]:
    """What mellon handed the application: its MELLON_* variables and the user/auth type."""
    variables = page_environment(page)
    view: dict[str, Any] = {
        name: value for name, value in variables.items() if name.startswith("MELLON_")
    }
    view["REMOTE_USER"] = variables.get("REMOTE_USER")
    view["AUTH_TYPE"] = variables.get("AUTH_TYPE")
    return view
