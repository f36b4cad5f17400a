"""The test harness itself: private redis-servers on free loopback ports."""
from __future__ import annotations

import socket
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import tests.redisproc as rp

from tests.redisproc import SYSTEM_PORT, RedisServer, RedisServerError


def test_session_server_is_private(redis_server, redis_url):
    assert redis_server.alive()
    assert redis_server.port != SYSTEM_PORT
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    c = redis_server.client()
    assert c.ping() is True
    info = c.info("server")
    assert int(info["process_id"]) == redis_server.pid        # our own process answers
    assert int(info["tcp_port"]) == redis_server.port
    assert c.config_get("bind")["bind"] == "127.0.0.1"
    assert c.config_get("save")["save"] == ""
    assert c.config_get("appendonly")["appendonly"] == "no"


def test_redis_url_is_flushed_for_each_test_1(redis_url, redis_server):
    c = redis_server.client()
    assert c.dbsize() == 0
    c.set("left-over", "1")


def test_redis_url_is_flushed_for_each_test_2(redis_url, redis_server):
    assert redis_server.client().dbsize() == 0


def test_kill_and_restart_with_aof_keeps_data(fresh_redis):
    port, pid = fresh_redis.port, fresh_redis.pid
    c = fresh_redis.client()
    assert c.config_get("appendonly")["appendonly"] == "yes"
    assert c.config_get("appendfsync")["appendfsync"] == "everysec"
    c.set("k", "v")
    c.close()
    # Redis write()s the AOF before it replies, so a SIGKILL keeps the key; the pause only covers
    # the rare write that everysec postpones while a background fsync is slow.
    time.sleep(1.1)
    fresh_redis.kill()
    assert not fresh_redis.alive()
    fresh_redis.restart()
    assert fresh_redis.port == port and fresh_redis.pid != pid
    assert fresh_redis.client().get("k") == "v"


def test_clean_stop_and_restart_keeps_data(fresh_redis):
    c = fresh_redis.client()
    c.mset({f"key{i}": str(i) for i in range(100)})
    fresh_redis.stop()
    assert not fresh_redis.alive()
    fresh_redis.restart()
    assert fresh_redis.client().dbsize() == 100


def test_two_servers_get_different_ports():
    with RedisServer() as a, RedisServer() as b:
        assert a.port != b.port
        assert SYSTEM_PORT not in (a.port, b.port)
        a.client().set("where", "a")
        assert b.client().get("where") is None
    assert not a.alive() and not b.alive()
    assert not a.dir.exists() and not b.dir.exists()


def test_password():
    with RedisServer(password="p@ss/word") as server:
        assert server.url == f"redis://:p%40ss%2Fword@127.0.0.1:{server.port}/0"
        assert redis.Redis.from_url(server.url).ping() is True
        with pytest.raises(redis.AuthenticationError):
            # no retries: redis-py 8 retries AuthenticationError (a ConnectionError) for ~4 s by default
            redis.Redis(host="127.0.0.1", port=server.port, retry=Retry(NoBackoff(), 0)).get("x")


def test_port_in_use_is_reported_on_restart(tmp_path):
    server = RedisServer()
    try:
        port = server.port
        server.kill()
        blocker = socket.socket()
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        try:
            saved, rp.RESTART_DEADLINE = rp.RESTART_DEADLINE, 1.0
            try:
                with pytest.raises(RedisServerError, match="busy"):
                    server.restart()
            finally:
                rp.RESTART_DEADLINE = saved
        finally:
            blocker.close()
        server.restart()                          # free again: comes back on the same port
        assert server.port == port and server.client().ping()
    finally:
        server.close()
