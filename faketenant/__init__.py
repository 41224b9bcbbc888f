"""A stateful loopback fake of Entra ID login, Microsoft Graph (Teams app installation) and the
Bot Connector (Teams 1:1 proactive messages), served over HTTPS on 127.0.0.1.

    tenant = FakeTenant(tenant_id=..., app_id=..., teams_app_id=..., client_secret="s3cret-value")
    alice = tenant.add_user("alice@contoso.com", display_name="Alice")
    with FakeTenantServer(tenant) as server:
        ...  # AuthorityHost = GraphEndpoint = server.base_url; ServiceUrl = server.base_url + "/teams/"

Clients must trust ``server.ca_pem_path``.  MSAL needs ``instance_discovery=False`` (an unknown
host would otherwise be checked against login.microsoftonline.com) and an ``http_client`` that
trusts the CA; note that requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` from the
environment override ``Session.verify`` unless ``session.trust_env = False``.  httpx honours
``SSL_CERT_FILE`` or ``verify=server.ssl_context()``.
"""

from .server import FakeTenantServer
from .state import (
    BOTFRAMEWORK_TENANT_ID,
    ROUTES,
    FakeTenant,
    FakeUser,
    Fault,
    Installation,
    LoggedRequest,
)

__all__ = [
    "BOTFRAMEWORK_TENANT_ID",
    "ROUTES",
    "FakeTenant",
    "FakeTenantServer",
    "FakeUser",
    "Fault",
    "Installation",
    "LoggedRequest",
]
