"""Bad input a user can type that once escaped as a traceback or left the queue changed: each is one line, a
QcgpjError, and writes nothing."""
from __future__ import annotations

import logging

import pytest

from qcgpj import Jobs, Manager, RedisPermissionError, connection
from qcgpj.errors import ArgumentError, ConnectionError


@pytest.mark.parametrize("url", ["redis://[::1/0", "redis://u:secret@[::1/0", "redis+cluster://[::1"])
def test_unclosed_ipv6_bracket_in_url_is_a_bad_url_without_the_password(url):
    # urlsplit's ValueError('Invalid IPv6 URL') escaped connect (and safe_url) as a traceback
    with pytest.raises(ConnectionError, match=r"^bad Redis URL .*Invalid IPv6 URL$") as exc:
        connection.connect(url)
    assert "secret" not in str(exc.value)


def test_submit_by_a_read_only_user_is_one_line_without_a_stage_warning(redis_server, redis_url, caplog):
    # RPUSH denied: the cleanup's DEL was denied too and warned of a staging list that was never written
    c = redis_server.client()
    c.execute_command("ACL", "SETUSER", "ro", "reset", "on", ">pw", "~*", "+@read", "+@connection", "+info")
    ro_url = redis_url.replace("redis://", "redis://ro:pw@")
    with caplog.at_level(logging.WARNING, logger="qcgpj.submission"):
        with pytest.raises(RedisPermissionError, match="'rpush'"):
            Manager(ro_url).submit(Jobs().add(name="a", exec="/bin/true"))
    assert not [r for r in caplog.records if r.name == "qcgpj.submission"], caplog.text
    assert c.keys("*") == []


@pytest.mark.parametrize("kw", [{"cores": 4}, {"nodes": "n0:4"}])
def test_local_mode_cores_or_nodes_with_a_queue_are_refused(redis_url, kw):
    # Manager(url, cores=4), and so 'qcgpj run f --redis-url U --cores 4', ignored them without a word
    with pytest.raises(ArgumentError, match="only in local mode"):
        Manager(redis_url, **kw)
