"""The signed-in user's addresses from Graph's `GET /me` answer (relay365 auth's alias check)."""

import pytest

from relay365.graph.client import addresses


@pytest.mark.parametrize("me, found", [
    ({"userPrincipalName": "J.Smith@contoso.com", "mail": "John.Smith@contoso.com",
      "proxyAddresses": ["SMTP:John.Smith@contoso.com", "smtp:Scanner@Contoso.com",
                         "X500:/o=ExchangeLabs/ou=x/cn=Recipients/cn=jsmith", "SIP:j.smith@contoso.com",
                         "smtp:js@contoso.mail.onmicrosoft.com"]},
     {"j.smith@contoso.com", "john.smith@contoso.com", "scanner@contoso.com",
      "js@contoso.mail.onmicrosoft.com"}),  # X500 and SIP are no mail addresses
    ({"userPrincipalName": "scanner@corp.contoso.com", "mail": None, "proxyAddresses": []},
     {"scanner@corp.contoso.com"}),  # no mailbox: mail is null
    ({"userPrincipalName": "a@x", "proxyAddresses": "smtp:b@x"}, {"a@x"}),  # not a list
    ({"proxyAddresses": [7, None, "smtp:", " smtp:c@x "]}, set()),  # the prefix is the start
    ({"proxyAddresses": ["sMtP:c@x"]}, {"c@x"}),
    ([], set()),
    (None, set()),
])
def test_addresses(me, found):
    assert addresses(me) == found
