"""A stateful loopback fake of Entra ID login, Microsoft Graph (Teams app installation) and the
Bot Connector (Teams 1:1 proactive messages), served over HTTPS on 127.0.0.1.

    tenant = FakeTenant(tenant_id=..., app_id=..., teams_app_id=..., client_secret="s3cret-value")
    alice = tenant.add_user("alice@contoso.com", display_name="Alice")
    with FakeTenantServer(tenant) as server:
        ...  # AuthorityHost = GraphEndpoint = server.base_url; ServiceUrl = server.base_url + "/teams/"
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
