// The bot's Entra app registration, provisioned with the Microsoft Graph Bicep extension.
// Secretless: the app has no password or certificate. Its only credential is a federated identity
// credential that trusts the Function App's user-assigned managed identity; the code takes a
// managed-identity token for api://AzureADTokenExchange and presents it as the client assertion.
//
// Resource shapes: https://learn.microsoft.com/graph/templates/bicep/reference/overview?view=graph-bicep-1.0
// and the quickstart microsoftgraph/msgraph-bicep-types quickstart-templates/msi-as-a-fic-secretless/main.bicep
// (applications + federatedIdentityCredentials child, servicePrincipals, appRoleAssignedTo).
extension microsoftGraphV1

@description('Immutable client-provided key of the application (Graph `uniqueName`), unique in the tenant.')
param uniqueName string
param displayName string
@description('principalId (object id) of the user-assigned managed identity trusted as the credential.')
param managedIdentityPrincipalId string
@description('Create the app role assignments (admin consent) for the Graph application permissions. Requires Privileged Role Administrator or Global Administrator.')
param grantGraphPermissions bool = false

// Microsoft Graph's well-known appId.
var graphAppId = '00000003-0000-0000-c000-000000000000'

// Graph application permission (app role) ids.
// Source: Microsoft Graph permissions reference, https://learn.microsoft.com/graph/permissions-reference
//   TeamsAppInstallation.ReadWriteSelfForUser.All (Application) = 908de74d-f8b2-4d6b-a9ed-2a17b3b78179
//   AppCatalog.Read.All (Application)                           = e12dae10-5a57-4817-b79d-dfbec5348930
var teamsAppInstallationReadWriteSelfForUserAll = '908de74d-f8b2-4d6b-a9ed-2a17b3b78179'
var appCatalogReadAll = 'e12dae10-5a57-4817-b79d-dfbec5348930'
var graphAppRoleIds = [
  teamsAppInstallationReadWriteSelfForUserAll
  appCatalogReadAll
]

// Federated credential: issuer is the tenant's v2.0 issuer, subject the managed identity's
// principal (object) id, audience the token-exchange audience of the public cloud.
// Source: https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity
var issuer = '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'

resource app 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  // Declared in any case, so an admin can grant consent in the portal (API permissions >
  // Grant admin consent) or with the /adminconsent URL when grantGraphPermissions is false.
  requiredResourceAccess: [
    {
      resourceAppId: graphAppId
      resourceAccess: [
        for roleId in graphAppRoleIds: {
          id: roleId
          type: 'Role'
        }
      ]
    }
  ]

  resource managedIdentityCredential 'federatedIdentityCredentials@v1.0' = {
    name: '${app.uniqueName}/function-managed-identity'
    description: 'Trusts the Function App user-assigned managed identity as the app credential (no secret).'
    issuer: issuer
    subject: managedIdentityPrincipalId
    audiences: [
      'api://AzureADTokenExchange'
    ]
  }
}

resource servicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: app.appId
}

resource graphServicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

// Admin consent for the application permissions: app role assignments on the Graph service principal.
resource graphAppRoleAssignments 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [
  for roleId in graphAppRoleIds: if (grantGraphPermissions) {
    appRoleId: roleId
    principalId: servicePrincipal.id
    resourceId: graphServicePrincipal.id
  }
]

output appId string = app.appId
output objectId string = app.id
output servicePrincipalId string = servicePrincipal.id
output uniqueName string = app.uniqueName
