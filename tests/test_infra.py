"""Static checks of infra/ (no Bicep CLI or Azure here): syntax, the settings contract with
shared/settings.py, secretless configuration, and the documented ids of roles and permissions."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_bicep

from shared.settings import SETTING_NAMES, ConfigurationError, load_settings

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_bicep.language()))

# tree-sitter-bicep 1.1.0 predates the `extension` statement (Graph Bicep extension). Exactly such
# lines are blanked before parsing; any other construct must parse as is.
EXTENSION_LINE = re.compile(r"^extension \w+$", re.MULTILINE)


def _blank_extension_lines(text: str) -> tuple[str, list[str]]:
    replaced = EXTENSION_LINE.findall(text)
    return EXTENSION_LINE.sub(lambda m: " " * len(m.group(0)), text), replaced


def _syntax_problems(source: str) -> list[str]:
    tree = PARSER.parse(source.encode("utf-8"))
    problems: list[str] = []
    stack = [tree.root_node]
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            row, col = node.start_point
            kind = "MISSING" if node.is_missing else "ERROR"
            problems.append(f"{kind} at {row + 1}:{col + 1}: {node.text[:60]!r}")
        stack.extend(node.children)
    return problems


def _parse(path: Path) -> tree_sitter.Node:
    text, _ = _blank_extension_lines(path.read_text(encoding="utf-8"))
    return PARSER.parse(text.encode("utf-8")).root_node


def _children(node: tree_sitter.Node, kind: str) -> list[tree_sitter.Node]:
    return [c for c in node.children if c.type == kind]


def _key(prop: tree_sitter.Node) -> str:
    key = prop.children[0]
    text = key.text.decode()
    return text.strip("'") if key.type == "string" else text


def _object_keys(obj: tree_sitter.Node) -> list[str]:
    return [_key(p) for p in _children(obj, "object_property")]


def _object_property(obj: tree_sitter.Node, name: str) -> tree_sitter.Node | None:
    for prop in _children(obj, "object_property"):
        if _key(prop) == name:
            return prop.children[-1]
    return None


# --------------------------------------------------------------------------------------------
# Syntax


def test_expected_files_exist() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in BICEP_FILES}
    assert {
        "main.bicep",
        "modules/identity.bicep",
        "modules/monitoring.bicep",
        "modules/storage.bicep",
        "modules/servicebus.bicep",
        "modules/appregistration.bicep",
        "modules/functionapp.bicep",
        "modules/bot.bicep",
    } <= names
    for extra in ("main.parameters.json", "bicepconfig.json", "abbreviations.json"):
        assert (INFRA / extra).is_file(), extra
    assert (ROOT / "azure.yaml").is_file()


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_parses_without_errors(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    blanked, replaced = _blank_extension_lines(text)
    # Only `extension <alias>` lines were blanked, and no other line mentions the keyword.
    assert all(re.fullmatch(r"extension \w+", line) for line in replaced)
    other = [ln for ln in text.splitlines() if ln.lstrip().startswith("extension") and ln not in replaced]
    assert not other, f"unexpected extension lines: {other}"
    assert len(blanked) == len(text)
    assert _syntax_problems(blanked) == []


def test_syntax_check_is_not_vacuous() -> None:
    assert _syntax_problems("param x string = \nresource r 'A/b@1' = {\n  name: \n") != []
    # The blanking touches exactly the extension statement, not a look-alike.
    _, replaced = _blank_extension_lines("extension microsoftGraphV1\nextension foo bar\n")
    assert replaced == ["extension microsoftGraphV1"]


def test_graph_extension_declared_and_configured() -> None:
    appreg = (INFRA / "modules/appregistration.bicep").read_text(encoding="utf-8")
    assert EXTENSION_LINE.findall(appreg) == ["extension microsoftGraphV1"]
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        if "Microsoft.Graph/" in text:
            assert "extension microsoftGraphV1" in text, path
    raw = (INFRA / "bicepconfig.json").read_text(encoding="utf-8")
    config = json.loads("\n".join(ln for ln in raw.splitlines() if not ln.lstrip().startswith("//")))
    ref = config["extensions"]["microsoftGraphV1"]
    assert re.fullmatch(r"br:mcr\.microsoft\.com/bicep/extensions/microsoftgraph/v1\.0:\d+\.\d+\.\d+", ref), ref


def test_module_params_match_module_declarations() -> None:
    """What `bicep build` would catch: unknown params and missing required params of each module."""
    main = _parse(INFRA / "main.bicep")
    modules = _children(main, "module_declaration")
    assert modules
    for module in modules:
        rel = _children(module, "string")[0].text.decode().strip("'")
        target = INFRA / rel
        assert target.is_file(), rel
        body = next(c for c in module.children if c.type == "object")
        params_obj = _object_property(body, "params")
        passed = set(_object_keys(params_obj)) if params_obj is not None else set()
        declared: dict[str, bool] = {}
        for decl in _children(_parse(target), "parameter_declaration"):
            name = decl.children[1].text.decode()
            has_default = any(c.type not in ("param", "identifier", "type") for c in decl.children[2:])
            declared[name] = has_default
        assert passed <= set(declared), f"{rel}: unknown params {passed - set(declared)}"
        required = {n for n, has_default in declared.items() if not has_default}
        assert required <= passed, f"{rel}: missing required params {required - passed}"


# --------------------------------------------------------------------------------------------
# Settings contract

# Settings the code reads that a deployment must NOT provision (secrets or local-only switches).
LOCAL_ONLY = {
    "MicrosoftAppPassword": "client secret: local development only; Azure uses the federated credential",
    "TableStorageConnection": "dedicated table connection string: local only (Azure: AzureWebJobsStorage__*)",
    "BotOpenIdMetadata": "override of the Bot Framework OpenID metadata URL: tests/emulator only",
    "NotificationSigningKey": "a secret (a Key Vault reference the deployer adds); unset, the app keeps its own key",
}
# Their connection-string form is local only; in Azure they are provisioned identity-based (X__...).
IDENTITY_BASED = ("AzureWebJobsStorage", "ServiceBusConnection")
# Provisioned for the Functions host itself; our code does not read them.
HOST_ONLY = {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}
# Host-only keys of local.settings.json.
LOCAL_HOST_ONLY = {"FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"}


def provisioned_app_settings() -> dict[str, tree_sitter.Node]:
    """Keys of `var appSettings = {...}` in functionapp.bicep (the site's appsettings resource)."""
    root = _parse(INFRA / "modules/functionapp.bicep")
    for decl in _children(root, "variable_declaration"):
        if decl.children[1].text.decode() == "appSettings":
            obj = decl.children[-1]
            assert obj.type == "object"
            return {_key(p): p.children[-1] for p in _children(obj, "object_property")}
    raise AssertionError("functionapp.bicep has no `var appSettings = {...}`")


def _as_code_setting(name: str, known: set[str]) -> str:
    if name in known:
        return name
    for base in IDENTITY_BASED:
        if name.startswith(base + "__"):
            return base
    return name


def contract_mismatch(setting_names: set[str], provisioned: set[str]) -> tuple[set[str], set[str]]:
    """(read by the code but not provisioned, provisioned but not read by the code)."""
    mapped = {_as_code_setting(n, setting_names) for n in provisioned} - HOST_ONLY
    expected = setting_names - set(LOCAL_ONLY)
    return expected - mapped, mapped - expected


def test_app_settings_match_setting_names() -> None:
    missing, unknown = contract_mismatch(set(SETTING_NAMES), set(provisioned_app_settings()))
    assert not missing, f"read by the code (SETTING_NAMES) but not provisioned by infra/: {sorted(missing)}"
    assert not unknown, f"provisioned by infra/ but not in SETTING_NAMES: {sorted(unknown)}"


def test_contract_check_catches_an_unprovisioned_setting() -> None:
    names = set(SETTING_NAMES) | {"SomeNewSetting"}
    missing, _ = contract_mismatch(names, set(provisioned_app_settings()))
    assert missing == {"SomeNewSetting"}


def test_local_only_list_is_current_and_not_provisioned() -> None:
    provisioned = set(provisioned_app_settings())
    assert set(LOCAL_ONLY) <= set(SETTING_NAMES), "stale LOCAL_ONLY entry"
    assert not set(LOCAL_ONLY) & provisioned
    # The connection-string forms are never provisioned: only the identity-based X__ forms.
    for base in IDENTITY_BASED:
        assert base not in provisioned
        assert any(n.startswith(base + "__") for n in provisioned)


def test_local_settings_example_matches_setting_names() -> None:
    values = json.loads((ROOT / "local.settings.json.example").read_text(encoding="utf-8"))["Values"]
    assert set(values) - LOCAL_HOST_ONLY == set(SETTING_NAMES)


def test_app_settings_are_secretless_and_identity_based() -> None:
    settings = provisioned_app_settings()

    def value(name: str) -> str:
        return settings[name].text.decode()

    assert value("AzureWebJobsStorage__credential") == "'managedidentity'"
    assert value("ServiceBusConnection__credential") == "'managedidentity'"
    for name in ("AzureWebJobsStorage__clientId", "ServiceBusConnection__clientId", "ManagedIdentityClientId"):
        assert value(name) == "identityClientId"
    for name in (
        "AzureWebJobsStorage__accountName",
        "AzureWebJobsStorage__blobServiceUri",
        "AzureWebJobsStorage__queueServiceUri",
        "AzureWebJobsStorage__tableServiceUri",
        "ServiceBusConnection__fullyQualifiedNamespace",
    ):
        assert name in settings
    assert value("MicrosoftAppType") == "'SingleTenant'"
    assert "Authorization=AAD" in value("APPLICATIONINSIGHTS_AUTHENTICATION_STRING")
    # No secret-bearing names or key material anywhere in infra/.
    for path in BICEP_FILES:
        text = path.read_text(encoding="utf-8")
        for needle in ("listKeys(", "AccountKey=", "SharedAccessKey", "passwordCredentials", "keyCredentials"):
            assert needle not in text, f"{path.name}: {needle}"
    storage = (INFRA / "modules/storage.bicep").read_text(encoding="utf-8")
    assert re.search(r"allowSharedKeyAccess:\s*false", storage)
    servicebus = (INFRA / "modules/servicebus.bicep").read_text(encoding="utf-8")
    assert re.search(r"disableLocalAuth:\s*true", servicebus)


def test_app_settings_resource_uses_the_parsed_object_only() -> None:
    text = (INFRA / "modules/functionapp.bicep").read_text(encoding="utf-8")
    assert re.search(r"name:\s*'appsettings'\s*\n\s*properties:\s*appSettings\b", text)
    for path in BICEP_FILES:  # no second place that sets app settings (siteConfig.appSettings)
        assert not re.search(r"^\s*appSettings\s*:", path.read_text(encoding="utf-8"), re.MULTILINE), path


# --------------------------------------------------------------------------------------------
# Resources


def test_function_app_is_flex_consumption() -> None:
    text = (INFRA / "modules/functionapp.bicep").read_text(encoding="utf-8")
    assert re.search(r"name:\s*'FC1'\s*\n\s*tier:\s*'FlexConsumption'", text)
    assert "kind: 'functionapp,linux'" in text
    assert re.search(r"name:\s*'python'\s*\n\s*version:\s*'3\.11'", text)
    assert "maximumInstanceCount: maximumInstanceCount" in text
    assert re.search(r"param instanceMemoryMB int = 2048", text)
    # HTTP concurrency per instance is set (the Python default is 1), from a bounded parameter.
    assert re.search(
        r"triggers:\s*\{\s*http:\s*\{\s*perInstanceConcurrency:\s*httpPerInstanceConcurrency\s*\}\s*\}", text
    )
    assert re.search(r"@minValue\(1\)\n@maxValue\(1000\)\nparam httpPerInstanceConcurrency int = 16\n", text)
    assert re.search(r"type:\s*'UserAssignedIdentity'", text)
    assert "'azd-service-name': 'api'" in text
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "targetScope = 'subscription'" in main
    assert "uniqueString(subscription().id, environmentName, location)" in main


def test_service_bus_queue() -> None:
    text = (INFRA / "modules/servicebus.bicep").read_text(encoding="utf-8")
    assert "lockDuration: 'PT5M'" in text
    assert "maxDeliveryCount: 10" in text
    assert "deadLetteringOnMessageExpiration: true" in text
    assert "param serviceBusQueueName string = 'notifications'" in (INFRA / "main.bicep").read_text(encoding="utf-8")


def test_bot_resource() -> None:
    text = (INFRA / "modules/bot.bicep").read_text(encoding="utf-8")
    assert "kind: 'azurebot'" in text
    assert "msaAppType: 'SingleTenant'" in text
    assert "name: 'MsTeamsChannel'" in text
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "endpoint: 'https://${functionApp.outputs.defaultHostName}/api/messages'" in main


def test_app_registration_federated_credential() -> None:
    text = (INFRA / "modules/appregistration.bicep").read_text(encoding="utf-8")
    assert "'Microsoft.Graph/applications@v1.0'" in text
    assert "'federatedIdentityCredentials@v1.0'" in text
    assert "'Microsoft.Graph/servicePrincipals@v1.0'" in text
    assert "'Microsoft.Graph/appRoleAssignedTo@v1.0'" in text
    assert "'api://AzureADTokenExchange'" in text
    assert "subject: managedIdentityPrincipalId" in text
    assert "'${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'" in text
    assert "param grantGraphPermissions bool = false" in text
    assert "if (grantGraphPermissions)" in text
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    assert "param grantGraphPermissions bool = false" in main


def test_azd_outputs_and_parameters() -> None:
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    outputs = set(re.findall(r"^output (\w+) ", main, re.MULTILINE))
    assert {
        "FUNCTION_URL",
        "MICROSOFT_APP_ID",
        "TEAMS_APP_ID",
        "AZURE_TENANT_ID",
        "AZURE_RESOURCE_GROUP",
        "AZURE_FUNCTION_APP_NAME",
    } <= outputs
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", o) for o in outputs)
    params = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    assert params["grantGraphPermissions"]["value"].startswith("${GRANT_GRAPH_PERMISSIONS")
    declared = set(re.findall(r"^param (\w+) ", main, re.MULTILINE))
    assert set(params) <= declared


def test_azure_yaml() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    service = re.search(r"^services:\n  api:\n((?:    .*\n)+)", text, re.MULTILINE)
    assert service, "azure.yaml must define service `api`"
    body = service.group(1)
    assert re.search(r"^    project: \.$", body, re.MULTILINE)
    assert re.search(r"^    language: python$", body, re.MULTILINE)
    assert re.search(r"^    host: function$", body, re.MULTILINE)


def test_resource_names_use_abbreviations() -> None:
    abbrs = json.loads((INFRA / "abbreviations.json").read_text(encoding="utf-8"))
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    used = set(re.findall(r"abbrs\.(\w+)", main))
    assert used and used <= set(abbrs)


# --------------------------------------------------------------------------------------------
# Documented ids

# Azure built-in role definition ids.
# Source: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles
# (storage, integration and monitor categories).
BUILT_IN_ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Azure Service Bus Data Owner": "090c5cfd-751d-490a-894a-3ce6f1109419",
    "Azure Service Bus Data Sender": "69a216fc-b8fb-44d8-bc22-1f3c2cd27a39",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
# Which variable holds which role, per file.
ROLE_VARIABLES = {
    "modules/storage.bicep": {
        "storageBlobDataOwnerRoleId": "Storage Blob Data Owner",
        "storageTableDataContributorRoleId": "Storage Table Data Contributor",
        "storageQueueDataContributorRoleId": "Storage Queue Data Contributor",
    },
    "modules/servicebus.bicep": {
        "serviceBusDataOwnerRoleId": "Azure Service Bus Data Owner",
        "serviceBusDataSenderRoleId": "Azure Service Bus Data Sender",
    },
    "modules/monitoring.bicep": {
        "monitoringMetricsPublisherRoleId": "Monitoring Metrics Publisher",
    },
}
# Microsoft Graph application permissions (app role ids on the Microsoft Graph service principal).
# Source: https://learn.microsoft.com/graph/permissions-reference
GRAPH_APP_ROLES = {
    "TeamsAppInstallation.ReadWriteSelfForUser.All": "908de74d-f8b2-4d6b-a9ed-2a17b3b78179",
    "AppCatalog.Read.All": "e12dae10-5a57-4817-b79d-dfbec5348930",
}
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def test_role_definition_ids_are_the_documented_built_ins() -> None:
    for rel, variables in ROLE_VARIABLES.items():
        text = (INFRA / rel).read_text(encoding="utf-8")
        found = dict(re.findall(r"^var (\w+RoleId) = '([0-9a-f-]{36})'", text, re.MULTILINE))
        assert found == {var: BUILT_IN_ROLES[role] for var, role in variables.items()}, rel
        # Every role assignment resolves its definition through one of these variables.
        for match in re.findall(r"roleDefinitions',\s*(\w+)\)", text):
            assert match in found or match == "roleId", (rel, match)


def test_graph_app_role_ids_are_documented() -> None:
    text = (INFRA / "modules/appregistration.bicep").read_text(encoding="utf-8")
    assert f"'{GRAPH_APP_ID}'" in text
    assert re.search(r"var teamsAppInstallationReadWriteSelfForUserAll = '908de74d-f8b2-4d6b-a9ed-2a17b3b78179'", text)
    assert re.search(r"var appCatalogReadAll = 'e12dae10-5a57-4817-b79d-dfbec5348930'", text)
    assert "type: 'Role'" in text


def test_no_undocumented_guid_literals() -> None:
    known = set(BUILT_IN_ROLES.values()) | set(GRAPH_APP_ROLES.values()) | {GRAPH_APP_ID}
    for path in BICEP_FILES:
        unknown = {g.lower() for g in GUID.findall(path.read_text(encoding="utf-8"))} - known
        assert not unknown, f"{path.name}: GUID literals not in the documented tables: {unknown}"


# --------------------------------------------------------------------------------------------
# Deployment defaults a reviewer checks (issue 17 part 4)


def _resources(path: Path) -> dict[str, tree_sitter.Node]:
    """Symbolic name -> body object of each top-level resource, conditional ones included (loops,
    `[for ...]`, are left out)."""
    found: dict[str, tree_sitter.Node] = {}
    for decl in _children(_parse(path), "resource_declaration"):
        name = decl.children[1].text.decode()
        body = next((c for c in decl.children if c.type in ("object", "if_statement")), None)
        if body is None:
            continue
        if body.type == "if_statement":
            body = next(c for c in body.children if c.type == "object")
        found[name] = body
    return found


def _role_assignments(path: Path) -> dict[str, dict[str, str]]:
    """Role assignment resources: symbolic name -> scope, role variable and principal expression."""
    result: dict[str, dict[str, str]] = {}
    text = path.read_text(encoding="utf-8")
    for name, body in _resources(path).items():
        if not re.search(rf"resource {name} 'Microsoft\.Authorization/roleAssignments@", text):
            continue
        props = _object_property(body, "properties")
        scope = _object_property(body, "scope")
        assert props is not None and scope is not None, name
        role = _object_property(props, "roleDefinitionId")
        principal = _object_property(props, "principalId")
        assert role is not None and principal is not None, name
        match = re.search(r"roleDefinitions',\s*(\w+)\)", role.text.decode())
        assert match, name
        result[name] = {"scope": scope.text.decode(), "role": match.group(1), "principal": principal.text.decode()}
    return result


def test_service_bus_identity_can_read_the_queue_length() -> None:
    """The scale controller reads the queue's message count with the app's identity: Manage rights,
    i.e. Azure Service Bus Data Owner, granted on the queue only (no namespace-wide data role)."""
    assignments = _role_assignments(INFRA / "modules/servicebus.bicep")
    identity = {n: a for n, a in assignments.items() if a["principal"] == "identityPrincipalId"}
    assert [(a["scope"], a["role"]) for a in identity.values()] == [("queue", "serviceBusDataOwnerRoleId")]
    deployer = {n: a for n, a in assignments.items() if a["principal"] == "deployerPrincipalId"}
    assert [(a["scope"], a["role"]) for a in deployer.values()] == [("namespace", "serviceBusDataSenderRoleId")]


def test_deployer_gets_table_data_contributor_for_the_operator_cli() -> None:
    assignments = _role_assignments(INFRA / "modules/storage.bicep")
    deployer = [a for a in assignments.values() if a["principal"] == "deployerPrincipalId"]
    assert deployer == [
        {"scope": "account", "role": "storageTableDataContributorRoleId", "principal": "deployerPrincipalId"}
    ]
    storage = (INFRA / "modules/storage.bicep").read_text(encoding="utf-8")
    assert "= if (!empty(deployerPrincipalId))" in storage
    main = _parse(INFRA / "main.bicep")
    module = next(m for m in _children(main, "module_declaration") if m.children[1].text.decode() == "storage")
    params = _object_property(next(c for c in module.children if c.type == "object"), "params")
    assert params is not None
    deployer_param = _object_property(params, "deployerPrincipalId")
    assert deployer_param is not None and deployer_param.text.decode() == "principalId"


def _param_decorators(path: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """param name -> (default expression text, {decorator name: argument text})."""
    text = path.read_text(encoding="utf-8")
    params: dict[str, tuple[str, dict[str, str]]] = {}
    for match in re.finditer(r"((?:@\w+\([^\n]*\)\n)*)param (\w+) \w+(?: = ([^\n]+))?\n", text):
        decorators = dict(re.findall(r"@(\w+)\((.*)\)", match.group(1)))
        params[match.group(2)] = (match.group(3) or "", decorators)
    return params


def test_maximum_instance_count_has_the_documented_flex_range() -> None:
    # Flex Consumption: "The lowest maximum scale is currently 40. The highest currently supported
    # value is 1000." (learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations)
    for rel in ("main.bicep", "modules/functionapp.bicep"):
        default, decorators = _param_decorators(INFRA / rel)["maximumInstanceCount"]
        assert (decorators["minValue"], decorators["maxValue"]) == ("40", "1000"), rel
        assert 40 <= int(default) <= 1000, rel
    params = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert params["maximumInstanceCount"]["value"] == "${MAXIMUM_INSTANCE_COUNT=40}"
    assert params["tenantSendRatePerSecond"]["value"] == "${TENANT_SEND_RATE_PER_SECOND=30}"
    assert params["tenantGraphRatePerSecond"]["value"] == "${TENANT_GRAPH_RATE_PER_SECOND=30}"
    assert params["httpPerInstanceConcurrency"]["value"] == "${HTTP_PER_INSTANCE_CONCURRENCY=16}"
    # The tenant budgets reach the app as they are (the instances share them through Table Storage),
    # not divided by the instance cap.
    main = _parse(INFRA / "main.bicep")
    module = next(m for m in _children(main, "module_declaration") if m.children[1].text.decode() == "functionApp")
    passed = _object_property(next(c for c in module.children if c.type == "object"), "params")
    assert passed is not None
    expected = {
        "maximumInstanceCount": "maximumInstanceCount",
        "tenantSendRatePerSecond": "string(tenantSendRatePerSecond)",
        "tenantGraphRatePerSecond": "string(tenantGraphRatePerSecond)",
        "httpPerInstanceConcurrency": "httpPerInstanceConcurrency",
    }
    for key, value in expected.items():
        node = _object_property(passed, key)
        assert node is not None and node.text.decode() == value, key
    assert "sendRatePerSecond" not in _param_decorators(INFRA / "main.bicep")
    assert not [d for d in _children(main, "variable_declaration") if "RatePerSecond" in d.text.decode()]


SETTINGS_BASE = {
    "MicrosoftAppId": "5e1f2a3b-1111-4222-8333-944455556666",
    "MicrosoftAppTenantId": "7a8b9c0d-1111-4222-8333-944455556666",
    "TeamsAppId": "0f0e0d0c-1111-4222-8333-944455556666",
    "ManagedIdentityClientId": "9d8c7b6a-1111-4222-8333-944455556666",
    "AzureWebJobsStorage__tableServiceUri": "https://stexample.table.core.windows.net/",
}


def test_tenant_budget_parameters_are_what_the_app_accepts() -> None:
    """main.bicep's tenant budgets go to the app settings TenantSendRatePerSecond /
    TenantGraphRatePerSecond unchanged: every value the parameters allow is one the app accepts, and
    the values just outside are ones it refuses (so the ranges agree)."""
    params = _param_decorators(INFRA / "main.bicep")
    for name, setting in (
        ("tenantSendRatePerSecond", "TenantSendRatePerSecond"),
        ("tenantGraphRatePerSecond", "TenantGraphRatePerSecond"),
    ):
        default, decorators = params[name]
        low, high = int(decorators["minValue"]), int(decorators["maxValue"])
        assert low <= int(default) <= high, name
        for value in (low, int(default), high):
            settings = load_settings({**SETTINGS_BASE, setting: str(value)})
            rate = settings.tenant_send_rate if setting == "TenantSendRatePerSecond" else settings.tenant_graph_rate
            assert rate == value, (name, value)
        for value in (low - 1, high + 1):
            with pytest.raises(ConfigurationError) as excinfo:
                load_settings({**SETTINGS_BASE, setting: str(value)})
            assert setting in str(excinfo.value), (name, value)
    module = (INFRA / "modules" / "functionapp.bicep").read_text(encoding="utf-8")
    assert "TenantSendRatePerSecond: tenantSendRatePerSecond" in module
    assert "TenantGraphRatePerSecond: tenantGraphRatePerSecond" in module


def test_app_registration_name_can_be_renewed_and_purged() -> None:
    """A deleted application keeps its uniqueName in deleted items: the deployment can take a fresh
    name (APP_REGISTRATION_SUFFIX) and outputs the object id the purge needs."""
    main = (INFRA / "main.bicep").read_text(encoding="utf-8")
    _, decorators = _param_decorators(INFRA / "main.bicep")["appRegistrationSuffix"]
    assert decorators.get("maxLength") == "20"
    assert re.search(
        r"var appRegistrationUniqueName = '\$\{abbrs\.entraApplications\}teams-notify-\$\{resourceToken\}"
        r"\$\{empty\(appRegistrationSuffix\) \? '' : '-\$\{appRegistrationSuffix\}'\}'",
        main,
    )
    assert "uniqueName: appRegistrationUniqueName" in main
    assert "output APP_REGISTRATION_OBJECT_ID string = appRegistration.outputs.objectId" in main
    params = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert params["appRegistrationSuffix"]["value"] == "${APP_REGISTRATION_SUFFIX=}"
    deployment = (ROOT / "docs" / "DEPLOYMENT.md").read_text(encoding="utf-8")
    assert "directory/deletedItems/$APP_REGISTRATION_OBJECT_ID" in deployment
    assert "azd env set APP_REGISTRATION_SUFFIX" in deployment


# --------------------------------------------------------------------------------------------
# checkov (static security scan of infra/)

CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
ACCEPTED_FINDINGS = INFRA / "checkov-accepted.json"
# Scanned with infra/: a storage account that allows plain HTTP and anonymous blob access. checkov must
# report it, or the scan proves nothing.
CANARY = """resource canary 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: 'stcanary'
  location: 'westeurope'
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    supportsHttpsTrafficOnly: false
    allowBlobPublicAccess: true
  }
}
"""
CANARY_FILE = "checkov-canary.bicep"


@pytest.fixture(scope="module")
def checkov_failed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """The checkov run's failed checks: one run per test run, also when its tests land in different
    pytest-xdist worker processes (the first runs it, under a lock; the others read its result)."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common folder
    result = shared / "checkov-failed.json"
    with open(shared / "checkov.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not result.exists():
            result.write_text(json.dumps(_checkov_failed(tmp_path_factory)), encoding="utf-8")
        failed: list[dict[str, str]] = json.loads(result.read_text(encoding="utf-8"))
    return failed


def _checkov_failed(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    """Failed checks of one checkov run (offline) over a copy of infra/ plus the canary, with the
    `extension` lines blanked (checkov's Bicep parser predates the statement)."""
    assert CHECKOV.is_file(), f"{CHECKOV} missing: ./scripts/test installs it (requirements-checkov.txt)"
    tmp_path = tmp_path_factory.mktemp("checkov")
    copy = tmp_path / "infra"
    shutil.copytree(INFRA, copy)
    for path in copy.rglob("*.bicep"):
        path.write_text(_blank_extension_lines(path.read_text(encoding="utf-8"))[0], encoding="utf-8")
    (copy / CANARY_FILE).write_text(CANARY, encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "BC_SKIP_MAPPING": "TRUE",  # no download of the check-id mapping
        "LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [
            str(CHECKOV),
            "--directory",
            str(copy),
            "--framework",
            "bicep",
            "--output",
            "json",
            "--quiet",
            "--compact",
            "--skip-download",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]  # 1: some check failed
    report = json.loads(result.stdout)
    assert report["check_type"] == "bicep"
    summary = report["summary"]
    assert summary["parsing_errors"] == 0, summary
    assert summary["passed"] > 0, summary
    return [
        {"check": c["check_id"], "file": c["file_path"].lstrip("/"), "resource": c["resource"]}
        for c in report["results"]["failed_checks"]
    ]


def test_checkov_scan_is_not_vacuous(checkov_failed: list[dict[str, str]]) -> None:
    canary = {f["check"] for f in checkov_failed if f["file"] == CANARY_FILE}
    assert "CKV_AZURE_3" in canary, canary  # supportsHttpsTrafficOnly false
    # Every Bicep file of infra/ was parsed (the extension line blanked), not silently dropped.
    scanned = {f["file"] for f in checkov_failed}
    assert {"modules/storage.bicep", "modules/functionapp.bicep"} <= scanned


def test_checkov_findings_are_fixed_or_accepted_with_a_reason(checkov_failed: list[dict[str, str]]) -> None:
    accepted = json.loads(ACCEPTED_FINDINGS.read_text(encoding="utf-8"))["accepted"]
    for entry in accepted:
        assert len(entry["reason"]) >= 80, f"accepted finding without a real reason: {entry}"

    def key(f: dict[str, str]) -> tuple[str, str, str]:
        return f["check"], f["file"], f["resource"]

    found = {key(f) for f in checkov_failed if f["file"] != CANARY_FILE}
    listed = {key(a) for a in accepted}
    assert len(listed) == len(accepted), "duplicate entries"
    assert not found - listed, (
        f"new checkov findings: fix them or accept them with a reason in {ACCEPTED_FINDINGS.name}: "
        f"{sorted(found - listed)}"
    )
    assert not listed - found, f"accepted findings checkov no longer reports (remove them): {sorted(listed - found)}"
