"""Bad input a user can type that once escaped as a traceback or left the queue changed: each is one line, a
QcgpjError, and writes nothing."""
from __future__ import annotations

import pytest

from qcgpj import connection
from qcgpj.errors import ConnectionError


@pytest.mark.parametrize("url", ["redis://[::1/0", "redis://u:secret@[::1/0", "redis+cluster://[::1"])
def test_unclosed_ipv6_bracket_in_url_is_a_bad_url_without_the_password(url):
    # urlsplit's ValueError('Invalid IPv6 URL') escaped connect (and safe_url) as a traceback
    with pytest.raises(ConnectionError, match=r"^bad Redis URL .*Invalid IPv6 URL$") as exc:
        connection.connect(url)
    assert "secret" not in str(exc.value)
