"""A connection's settings, checked before any channel is made (server address, token, timeout),
and what a failed connection most likely means (:func:`connection_hint`). The client checks what it
is given with these, and the server its own address and token."""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable

from flowrl_deploy.contract import MAX_TIMEOUT_S
from flowrl_deploy.errors import FlowRLError, printable
from flowrl_deploy.fieldtypes import is_number, shown


def is_flag(name: str) -> bool:
    """Whether an error names a setting by its command-line flag (``--server``) or as in code."""
    return name.startswith("--")


def checked_timeout(timeout_s: object, name: str = "timeout_s") -> float:
    """A call deadline in seconds: a finite number in (0, :data:`MAX_TIMEOUT_S`]. gRPC takes 0 or less
    as already past and fails every call with a bare DEADLINE_EXCEEDED."""
    if not (is_number(timeout_s) and 0 < timeout_s <= MAX_TIMEOUT_S):
        raise FlowRLError(f"{name} must be a number of seconds in (0, {MAX_TIMEOUT_S:g}], got {shown(timeout_s)}")
    return float(timeout_s)


_HOST = re.compile(r"[A-Za-z0-9._-]+")  # a host name or an IPv4 address
_PORT = re.compile(r"[0-9]{1,5}")


DEFAULT_SERVER = "localhost:50051"
"""The server a command calls without --server: `flowrl serve`'s default port on this machine."""
EVERY_INTERFACE = {"0.0.0.0": "127.0.0.1", "::": "::1"}
"""Hosts that bind every interface, and the loopback address a client on this machine reaches them at."""


def host_port(host: str, port: int) -> str:
    """``host:port``, bracketing IPv6 literals (a host given bracketed is kept as it is)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host`` (``localhost``, 127.0.0.0/8, ``::1``)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name
        return False


NO_CONNECTION = "failed to connect to all addresses"
"""gRPC's words for a channel that never got a connection up: a TLS server closing a plaintext
client's connection says no more than that (``…: Socket closed``), and neither does a client
certificate it asked for and missed."""


_REFUSED = re.compile(r'Connection refused|actively refused|WSAECONNREFUSED|"?wsa_error"?:\s*10061\b')
"""A connection the server's machine refused (nothing listens there): 'Connection refused' on Linux
and macOS, and in gRPC's Windows errors since grpc/grpc #33502 ('ConnectEx: Connection refused (No
connection could be made because the target machine actively refused it. -- 10061)'); Windows' own
words, or WSAECONNREFUSED's code 10061 as older gRPC cores reported it (``"wsa_error":10061``, in
whatever language Windows speaks) otherwise. A port numbered 10061 is not taken for it."""


CLOSED = "Socket closed"
"""gRPC's words for a connection the server closed before any answer: a TLS server's to a plaintext
client's hello or to a client without the certificate it asks for or with one it refuses, and a
server at its ``--max-connections`` (which closes any connection beyond at once, before reading from
it; a TLS client then reads :data:`CUT_HANDSHAKE`)."""
CUT_HANDSHAKE = "Handshake read failed"
"""A TLS client's words for a connection closed before the server's TLS hello: a TLS server answers
the hello, so this is a server that closed it unread, most likely at its ``--max-connections``."""
AT_THE_CAP = "the server may be at its --max-connections, closing connections beyond it at once"
_IPV6_LOOPBACK = re.compile(r"ipv6:(?:%5B|\[)::1(?:%5D|\]):([0-9]{1,5}):")
"""localhost's IPv6 address in gRPC's error, as it writes it (``ipv6:%5B::1%5D:50051:``), and its port."""


def _ipv4_localhost_answers(error: str, hosts: tuple[str, ...]) -> bool:
    """Whether ``error``, a refusal, is that of localhost's IPv6 address while 127.0.0.1 takes a
    connection at its port: gRPC tries both addresses of ``localhost`` (whatever /etc/hosts says), a
    server on 127.0.0.1 (flowrl serve's default --host) refuses [::1], and gRPC reports its last try's
    error alone, either address's. Asked only once a connection has failed."""
    match = _IPV6_LOOPBACK.search(error)
    if match is None or "localhost" not in hosts:
        return False
    try:
        with socket.create_connection(("127.0.0.1", int(match[1])), timeout=1):
            return True
    except (OSError, OverflowError):
        return False


def connection_hint(error: str, target: str, tls_ca: str, tls_cert: str) -> str:
    """What to try after a failed connection to ``target`` (a :func:`checked_target`), given its
    error and the TLS files the user passed ('' if none fits). TLS options are suggested only for a
    connection that never came up (:data:`NO_CONNECTION`), not for the server's own answers (the
    model still loading) or a connection lost after it was up; a connection closed at once (:data:`CLOSED`,
    :data:`CUT_HANDSHAKE`) also names the server's connection cap, and so does a refused [::1] of a
    ``localhost`` whose 127.0.0.1 takes connections (what failed there is unknown), except a client's
    with ``tls_cert`` closed after the server's TLS hello (:data:`CLOSED` alone): its certificate
    was refused."""
    closed, lead = CLOSED in error, ""
    if _REFUSED.search(error):  # nothing listens at that address: TLS is not the question
        hosts = target_hosts(target)
        if hosts is None:  # unix: or unix-abstract: (flowrl serve itself listens on a port, a proxy may not)
            return "nothing listens at that socket path on this machine: check the path of the server's socket"
        if _ipv4_localhost_answers(error, hosts):  # a server there: TLS or the cap is the question after all
            closed, lead = True, "[::1] refused, but 127.0.0.1 takes connections: "
        elif all(is_loopback(host) or host in EVERY_INTERFACE for host in hosts):
            if target == DEFAULT_SERVER:  # most likely --server left out, the server on another port (--port 0)
                return (
                    "nothing listens at that port on this machine: is `flowrl serve` running? It may listen on "
                    "another port: `flowrl serve` prints its address in its 'serving' line "
                    f"({DEFAULT_SERVER} is --server's default)"
                )
            return "nothing listens at that port on this machine: is `flowrl serve` running, with that --port?"
        else:
            return (
                "nothing listens at that port; to be reached from another machine, `flowrl serve` needs "
                "--host 0.0.0.0 (its default, 127.0.0.1, takes local connections only)"
            )
    if "certificate has expired" in error:
        return (
            "the server's certificate has expired (or this machine's clock is wrong): the server needs a "
            "renewed --tls-cert"
        )
    if "CERTIFICATE_VERIFY_FAILED" in error:
        if tls_ca:
            return (
                "the server's certificate is not signed by the CA given with --tls-ca: pass the CA that "
                "issued the server's --tls-cert"
            )
        return "the server's certificate is not signed by a CA this machine trusts: pass that CA with --tls-ca"
    if "WRONG_VERSION_NUMBER" in error:  # the server answered the TLS hello in plaintext
        return "the server does not use TLS: drop --tls-ca, --tls-cert and --tls-key"
    if "Failed parsing HTTP/2" in error:  # e.g. 'HTTP/1.0 400' from the metrics port
        return "that port does not answer gRPC (is it the server's --metrics-port?): give the server's --port"
    if NO_CONNECTION not in error:  # the server answered (still loading, stopping) or a live connection broke
        return ""
    if CUT_HANDSHAKE in error:  # a TLS client's connection closed before the server's hello
        return f"the server closed the connection before TLS began: {AT_THE_CAP}"
    if tls_cert and closed and not lead:  # after the server's hello, so not at the cap (CUT_HANDSHAKE)
        return (
            "the server refused the client certificate in the TLS handshake: its --client-ca did not sign "
            "--tls-cert, or --tls-cert has expired"
        )
    if not tls_ca and not tls_cert:
        hint = "if the server uses TLS, pass --tls-ca"
    elif not tls_cert:
        hint = "if the server asks for client certificates (--client-ca), pass --tls-cert and --tls-key"
    else:
        hint = ""
    if not closed:
        return hint
    return lead + (f"{hint}; or {AT_THE_CAP}" if hint else AT_THE_CAP)


def silent_hint(connected: bool, timeout_s: float, tls_ca: str, tls_cert: str) -> str:
    """What a call that ran out of time (DEADLINE_EXCEEDED) most likely means: with a gRPC connection
    up (``connected``), a server slow to answer; without one, an address where nothing answers gRPC
    (a firewall dropping packets, another kind of service, a TLS server asked in plaintext)."""
    if connected:
        return f"the server took the call but gave no answer within {timeout_s:g} s: it may be busy; raise --timeout"
    lead = (
        f"no gRPC connection came up within {timeout_s:g} s: nothing answers at that address (a firewall "
        "dropping packets?), or what listens there is not a gRPC server"
    )
    if not tls_ca and not tls_cert:
        return f"{lead}; if the server uses TLS, pass --tls-ca"
    return lead


TARGET_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
"""gRPC's naming schemes (``scheme:…``) a target may use; any other target is ``host:port``."""
URL_SCHEMES = ("http", "https", "grpc", "grpcs")
"""Schemes of a URL a user may give for a server (``http://host:port``), which gRPC's targets do not take."""


def checked_target(target: str, name: str = "target") -> str:
    """``target`` when it is a server address gRPC reads as meant: ``host:port``, ``[IPv6]:port``,
    or one of gRPC's naming schemes (:data:`TARGET_SCHEMES`): ``dns:[//DNS-SERVER-IP:PORT/]host:port``
    (a headless Service's name, re-resolved by gRPC), ``ipv4:a:port,b:port``,
    ``ipv6:[a]:port,[b]:port``, ``unix:PATH`` and ``unix-abstract:NAME``. Each address is checked as
    a plain one is, and anything else is refused naming ``name`` (the flag or the argument): gRPC
    would wrap a negative port round to another one, take 443 for a missing port, or log its parser's
    trace."""
    target_hosts(target, name)
    return target


def target_hosts(target: str, name: str = "target") -> tuple[str, ...] | None:
    """The hosts ``target`` names (an IPv6 address without its brackets), or None for a socket on this
    machine (``unix:``, ``unix-abstract:``); ``target`` is checked as :func:`checked_target` says."""

    def refused(why: str) -> FlowRLError:
        return FlowRLError(
            f"{name} {target!r}: {why}; give host:port such as localhost:50051 (or [::1]:50051, "
            "dns:///name:50051, ipv4:10.0.0.2:50051,10.0.0.3:50051, unix:/path/to/socket)"
        )

    if not isinstance(target, str):
        raise refused("not a string")
    if not target:
        raise refused("empty")
    scheme, _, rest = target.partition(":")
    if scheme.lower() in URL_SCHEMES and rest.startswith("//"):  # http://host:port read as 'more than one :'
        raise FlowRLError(f"{name} {target!r}: drop '{scheme}://': give {printable(rest[2:].rstrip('/'))} (host:port)")
    if scheme not in TARGET_SCHEMES:
        return (_checked_address(target, refused),)
    if scheme.startswith("unix"):
        if not rest.strip("/"):
            raise refused(f"no {'socket path' if scheme == 'unix' else 'name'} after '{scheme}:'")
        return None
    if scheme == "dns":
        where = "dns:"
        if rest.startswith("//"):  # dns://DNS-SERVER-IP:PORT/host:port ('' for the system's)
            server, _, rest = rest[2:].partition("/")
            where = f"dns://{server}/"
            if server:
                _checked_dns_server(server, refused)
        if not rest:
            raise refused(f"no host:port after '{where}'")
        if "," in rest:
            raise refused("dns: takes one host:port, not a list (ipv4: and ipv6: take lists)")
        return (_checked_address(rest, refused),)
    hosts: list[str] = []
    for address in rest.split(","):  # ipv4: or ipv6: with a list of addresses
        if not address:
            raise refused("an empty address in the list")
        if scheme == "ipv6" and not address.startswith("["):
            raise refused(f"{address!r}: an IPv6 address goes in brackets, as [::1]:50051")
        hosts.append(_checked_address(address, refused))
        if scheme == "ipv4" and not _is_ipv4(hosts[-1]):
            raise refused(f"{hosts[-1]!r} is not an IPv4 address")
    return tuple(hosts)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _checked_dns_server(server: str, refused: Callable[[str], FlowRLError]) -> None:
    """Refuse a ``dns://SERVER/`` other than an IP address and port, all gRPC takes there: it failed
    every call with 'INTERNAL: Illegal status code from resolver; … Cannot parse authority'."""

    def dns_refused(why: str) -> FlowRLError:
        return refused(f"the DNS server {server!r}: {why} (give its IP address and port, as dns://10.0.0.10:53/)")

    host = _checked_address(server, dns_refused)
    if not (server.startswith("[") or _is_ipv4(host)):
        raise dns_refused(f"{host!r} is not an IP address")


def _checked_address(address: str, refused: Callable[[str], FlowRLError]) -> str:
    """The host of ``address`` (``host:port`` or ``[IPv6]:port``), or ``refused(why)`` raised."""
    if address.startswith("["):
        host, bracket, port = address[1:].partition("]")
        if not port.startswith(":"):
            raise refused("no ':port' after the bracketed IPv6 address" if bracket else "the '[' is not closed")
        port = port[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise refused(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, colon, port = address.rpartition(":")
        if not colon:
            raise refused("no port")
        if ":" in host:
            raise refused("more than one ':' (an IPv6 address goes in brackets)")
        if not _HOST.fullmatch(host):
            raise refused(f"{host!r} is not a host name or an IP address" if host else "no host")
    if not (_PORT.fullmatch(port) and 0 < int(port) < 65536):
        raise refused(f"port {port} is not in 1-65535")
    return host


def checked_token(token: str, name: str = "token") -> str:
    """``token`` when gRPC can send it in the ``authorization`` header: printable ASCII (an HTTP/2
    header value) without whitespace at either end. Anything else is refused naming ``name`` (the
    flag or the argument), never echoing the secret: gRPC would fail every call with ``INTERNAL:
    Invalid metadata`` and log its C core's complaint. The client and the server check alike."""
    if not isinstance(token, str):
        raise FlowRLError(f"{name} must be a string, got {type(token).__name__}")
    if token[-1:] in ("\r", "\n"):
        raise FlowRLError(f"{name} ends with a newline (\\r or \\n): a token read from a file keeps it; strip it")
    if token != token.strip():
        raise FlowRLError(f"{name} begins or ends with whitespace, which a header cannot carry; strip it")
    for position, char in enumerate(token, 1):
        if not " " <= char <= "~":
            kind = "a control character" if char.isascii() or not char.isprintable() else "a non-ASCII character"
            raise FlowRLError(
                f"{name} holds {kind} at position {position}: it travels in an HTTP/2 header, which takes "
                "printable ASCII only (letters, digits, punctuation, space)"
            )
    return token
