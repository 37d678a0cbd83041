"""The address checks of the egress filter (``shared/netguard.py``): every range an agent may not reach, the forms an
address can be written in, ``localhost`` names, the static hosts map, and ``allowed_domains`` patterns. Pure
functions: no network (names that would need DNS are given through the hosts map)."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.netguard import (
    DOMAIN_MAX_CHARS,
    DOMAIN_PATTERN,
    NetworkGuard,
    address_refusal,
    clean_domain_patterns,
    domain_allowed,
    ip_literal,
    normalize_host,
    parse_hosts,
    resolve,
)

REFUSED = [
    # address, the words its refusal starts with
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.0.5", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("fd00::1", "private"), ("fc00::1", "private"),
    ("169.254.169.254", "link-local"), ("169.254.0.1", "link-local"), ("fe80::1", "link-local"),
    ("100.64.0.1", "CGNAT"), ("100.127.255.254", "CGNAT"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("0.1.2.3", "private"),
    ("192.0.2.1", "private"), ("198.18.0.1", "private"), ("2001:db8::1", "private"), ("2001::1", "private"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"), ("::ffff:10.1.2.3", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"), ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("64:ff9b::7f00:1", "NAT64 of loopback"), ("64:ff9b::a9fe:a9fe", "NAT64 of link-local"),
    ("64:ff9b::a00:1", "NAT64 of private"), ("64:ff9b:1::a00:1", "local-use NAT64"),
    ("2002:7f00:1::1", "6to4 of loopback"), ("2002:c0a8:101::1", "6to4 of private"),
    ("::7f00:1", "IPv4-compatible"), ("::a00:1", "IPv4-compatible"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED, ids=[a for a, _ in REFUSED])
def test_every_non_global_range_is_refused_with_its_name(address: str, why: str) -> None:
    reason = address_refusal(ipaddress.ip_address(address))
    assert reason is not None and reason.startswith(why), (address, reason)


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_globally_routable_addresses_pass_also_inside_mapped_nat64_and_6to4(address: str) -> None:
    assert address_refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("host", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
    ("0X7F000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("017700000001", "127.0.0.1"), ("127.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"), ("127.0.1", "127.0.0.1"), ("127.0.0.1.", "127.0.0.1"), ("0", "0.0.0.0"),
    ("0x0", "0.0.0.0"), ("169.254.43518", "169.254.169.254"), ("0xa9fea9fe", "169.254.169.254"),
    ("[::1]", "::1"), ("[::ffff:127.0.0.1]", "::ffff:7f00:1"), ("::ffff:7f00:1", "::ffff:7f00:1"),
    ("[fe80::1%eth0]", "fe80::1"), ("[64:ff9b::127.0.0.1]", "64:ff9b::7f00:1"),
])
def test_addresses_are_read_in_every_form_a_browser_or_inet_aton_accepts(host: str, address: str) -> None:
    assert ip_literal(host) == ipaddress.ip_address(address)


@pytest.mark.parametrize("host", ["example.com", "deadbeef", "cafe.be", "0x", "08.0.0.1", "1.2.3.4.5", "", "a..b",
                                  "4294967296", "[not-v6]", "localhost"])
def test_names_and_malformed_numbers_are_not_addresses(host: str) -> None:
    assert ip_literal(host) is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST.", "localhost.", "foo.localhost", "a.b.localhost."])
def test_localhost_names_stand_for_loopback_whatever_dns_says(host: str) -> None:
    addresses = resolve(host, {})
    assert addresses and all(address_refusal(a) == "loopback" for a in addresses)


def test_the_hosts_map_answers_before_dns_and_keeps_every_address() -> None:
    # Given a hosts map with a name given twice
    hosts = parse_hosts(["intranet.test=10.0.0.5", "INTRANET.test.=::1", "public.test=93.184.216.34"])
    # Then the name resolves to both addresses, in order, whatever its case or trailing dot
    assert resolve("Intranet.Test.", hosts) == [ipaddress.ip_address("10.0.0.5"), ipaddress.ip_address("::1")]
    assert resolve("public.test", hosts) == [ipaddress.ip_address("93.184.216.34")]
    # And an address literal is itself, not looked up
    assert resolve("0x7f000001", hosts) == [ipaddress.ip_address("127.0.0.1")]


@pytest.mark.parametrize("entry", ["intranet.test", "=10.0.0.1", "a.test=not-an-address", "a.test="])
def test_a_malformed_hosts_entry_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(ValueError, match="egress hosts entry"):
        parse_hosts([entry])


def test_normalize_host_drops_case_brackets_zone_and_trailing_dots() -> None:
    assert [normalize_host(h) for h in ("LOCALHOST.", "[::1]", "[FE80::1%eth0]", "a.b..")] == [
        "localhost", "::1", "fe80::1", "a.b"]


# --- allowed_domains patterns ----------------------------------------------------------------------------------------
def test_patterns_are_normalized_once_each() -> None:
    assert clean_domain_patterns(["Example.COM.", "*.Example.org", "example.com", "xn--bcher-kva.de", "127.1",
                                  "[::1]"]) == [
        "example.com", "*.example.org", "xn--bcher-kva.de", "127.0.0.1", "::1"]


@pytest.mark.parametrize("pattern", ["", "*", "*.", "**.a.com", "a.*.com", "*a.com", "https://a.com", "a.com/path",
                                     "a.com:443", "-a.com", "a-.com", "a b.com", "a_b.com", "*.127.0.0.1",
                                     "bücher.de", " a.com", "::1", "[::ffff:1.2.3.4]", "[1::2::3]", "*.0x7f.1",
                                     "a." + "b" * 64 + ".com", ("a" * 60 + ".") * 5 + "com"])
def test_a_bad_pattern_is_refused_naming_it(pattern: str) -> None:
    with pytest.raises(ValueError) as raised:
        clean_domain_patterns(["ok.com", pattern])
    assert repr(pattern) in str(raised.value)


@pytest.mark.parametrize(("host", "allowed"), [
    ("example.com", True), ("EXAMPLE.com.", True), ("www.example.com", False), ("badexample.com", False),
    ("example.org", False), ("a.example.org", True), ("a.b.example.org", True), ("xexample.org", False),
    ("93.184.216.34", True), ("1572395042", True), ("93.184.216.35", False), ("xn--bcher-kva.de", True),
])
def test_a_host_matches_a_name_exactly_or_a_wildcard_below_it(host: str, allowed: bool) -> None:
    patterns = clean_domain_patterns(["example.com", "*.example.org", "93.184.216.34", "xn--bcher-kva.de"])
    assert domain_allowed(host, patterns) is allowed


def test_an_international_name_is_refused_with_its_ascii_form() -> None:
    with pytest.raises(ValueError, match=r"xn--bcher-kva\.de"):
        clean_domain_patterns(["bücher.de"])


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(DOMAIN_PATTERN, fullmatch=True).filter(lambda p: len(p) <= DOMAIN_MAX_CHARS))
def test_every_string_the_documented_pattern_matches_is_a_valid_pattern(pattern: str) -> None:
    # The OpenAPI document gives DOMAIN_PATTERN as allowed_domains' items: what it allows, the API takes
    (cleaned,) = clean_domain_patterns([pattern])
    if pattern.startswith("["):
        assert ipaddress.IPv6Address(pattern[1:-1]) == ipaddress.IPv6Address(cleaned)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="ab1x.-*:[]ü_ /", max_size=12))
def test_what_the_documented_pattern_refuses_is_refused(pattern: str) -> None:
    if re.fullmatch(DOMAIN_PATTERN, pattern):
        return
    with pytest.raises(ValueError):
        clean_domain_patterns([pattern])


def test_no_patterns_allow_any_host() -> None:
    assert domain_allowed("anything.test", [])


# --- NetworkGuard (webhooks, and the early check of a navigation) ---------------------------------------------------
@pytest.mark.parametrize("url", ["http://localhost./", "http://foo.localhost:8080/", "http://LOCALHOST./x",
                                 "http://2130706433/", "http://0x7f000001/", "http://[64:ff9b::a9fe:a9fe]/"])
def test_network_guard_refuses_localhost_names_and_disguised_addresses(url: str) -> None:
    reason = NetworkGuard(False).check(url)
    assert reason is not None and "private address" in reason, (url, reason)
