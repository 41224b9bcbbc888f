// Deploys the whole product with `azd up`: resource group, user-assigned managed identity, storage,
// Service Bus, monitoring, the Entra app registration (Microsoft Graph Bicep extension), the Flex
// Consumption Function App and the Azure Bot with its Teams channel. Nothing here holds a secret:
// every connection is identity-based and the app registration trusts the managed identity through
// a federated identity credential instead of a client secret.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; used in resource names and the azd-env-name tag.')
param environmentName string

@minLength(1)
@description('Azure region for every regional resource (must offer Flex Consumption).')
param location string

@description('Object id of the deploying user (azd sets AZURE_PRINCIPAL_ID); gets Service Bus Data Sender (send test messages) and Storage Table Data Contributor (the operator CLI reads and repairs the app tables). Empty: no grant.')
param principalId string = ''

@description('Grant the Graph application permissions (admin consent) in the deployment. Needs a deployer with Privileged Role Administrator or Global Administrator; otherwise leave false and consent once in the portal.')
param grantGraphPermissions bool = false

@description('Teams app manifest id (the org catalog externalId). Empty: a deterministic GUID derived from subscription and environment, which the app package build reads back from the TEAMS_APP_ID output.')
param teamsAppId string = ''

// Flex Consumption accepts maximumInstanceCount from 40 to 1000
// (https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations).
@minValue(40)
@maxValue(1000)
@description('Upper bound on Function App instances (Flex Consumption: 40 to 1000). The send rate does not depend on it: tenantSendRatePerSecond is the whole tenant budget, shared by all instances.')
param maximumInstanceCount int = 40

// Teams allows about 30-50 Bot Connector requests per second per app per tenant (sends, conversation
// creation) and Graph about 30 per second per app per tenant for the install calls
// (https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit; https://learn.microsoft.com/graph/throttling-limits#microsoft-teams-service-limits). These budgets are what ALL instances together may use: they are passed
// through as the app settings TenantSendRatePerSecond and TenantGraphRatePerSecond, and the instances
// share them through a token bucket in Table Storage (shared/storage/budget.py), however many there are. The
// default 30 is the lower end: the app paces itself under the budget it is given (the last token of
// each second stays unused, for requests that arrive late). The app accepts 1 to 1000.
@minValue(1)
@maxValue(1000)
@description('Bot Connector requests per second per tenant for the whole app (Teams: ~30-50 per app per tenant), shared by all instances (app setting TenantSendRatePerSecond).')
param tenantSendRatePerSecond int = 30

@minValue(1)
@maxValue(1000)
@description('Graph requests per second per tenant for the whole app (cold resolutions: install, chat lookup), shared by all instances (app setting TenantGraphRatePerSecond).')
param tenantGraphRatePerSecond int = 30

@minValue(1)
@maxValue(1000)
@description('Concurrent HTTP requests per instance (Flex Consumption perInstanceConcurrency). The Python default is 1; the functions are async, so one instance serves many requests at once.')
param httpPerInstanceConcurrency int = 16

@description('Optional suffix of the app registration uniqueName. Set a new value to start with a fresh app registration, e.g. after deleting the old one without purging it from deleted items (a deleted application keeps its uniqueName for 30 days).')
@maxLength(20)
param appRegistrationSuffix string = ''

@allowed([
  'F0'
  'S1'
])
@description('Azure Bot pricing tier. Teams is a standard channel: F0 is enough for Teams-only bots.')
param botSku string = 'F0'

@description('Service Bus queue that the queue trigger reads (app setting ServiceBusQueueName).')
param serviceBusQueueName string = 'notifications'

@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param serviceBusSku string = 'Standard'

@description('Prefix of the Table Storage tables the app creates (app setting TableNamePrefix).')
param tableNamePrefix string = 'teamsnotify'

@description('Bot Connector base URL (app setting ServiceUrl).')
param serviceUrl string = 'https://smba.trafficmanager.net/teams/'

@description('Entra login base URL (app setting AuthorityHost).')
param authorityHost string = 'https://login.microsoftonline.com'

@description('Microsoft Graph base URL without version (app setting GraphEndpoint).')
param graphEndpoint string = 'https://graph.microsoft.com'

param httpTimeoutSeconds string = '10'
param retryMaxAttempts string = '4'
param retryMaxDelaySeconds string = '30'
@description('Sends in flight per instance (app setting MaxConcurrentSends).')
param maxConcurrentSends string = '8'

@description('Who may call the HTTP API (app setting ApiAuthMode): FunctionKey, or EntraId (recommended; docs/API.md, Who may call the API).')
@allowed([
  'FunctionKey'
  'EntraId'
])
param apiAuthMode string = 'FunctionKey'
@description('The API\'s Application ID URI (app setting ApiAudience), required with apiAuthMode EntraId.')
param apiAudience string = ''
@description('The app role a caller needs (app setting ApiRequiredRole).')
param apiRequiredRole string = 'Notifications.Send'
@description('Reinstall the bot for a user who uninstalled it (app setting ReinstallAfterUninstall).')
@allowed([
  'true'
  'false'
])
param reinstallAfterUninstall string = 'true'
@description('Retention in days per table, 0 = forever (app settings RetentionDays*, RecipientCacheUnusedDays).')
param retentionDaysRequests string = '30'
param retentionDaysNotifications string = '30'
param retentionDaysDeliveries string = '30'
param retentionDaysFailures string = '30'
param recipientCacheUnusedDays string = '30'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var effectiveTeamsAppId = empty(teamsAppId) ? guid(subscription().id, environmentName, 'teams-app-manifest') : teamsAppId
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var appRegistrationUniqueName = '${abbrs.entraApplications}teams-notify-${resourceToken}${empty(appRegistrationSuffix) ? '' : '-${appRegistrationSuffix}'}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    appInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
    identityPrincipalId: identity.outputs.principalId
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: 'app-package-${resourceToken}'
    identityPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  scope: rg
  params: {
    name: '${abbrs.serviceBusNamespaces}${resourceToken}'
    location: location
    tags: tags
    sku: serviceBusSku
    queueName: serviceBusQueueName
    identityPrincipalId: identity.outputs.principalId
    deployerPrincipalId: principalId
  }
}

module appRegistration 'modules/appregistration.bicep' = {
  name: 'appregistration'
  scope: rg
  params: {
    uniqueName: appRegistrationUniqueName
    displayName: 'Teams proactive notifications (${environmentName})'
    managedIdentityPrincipalId: identity.outputs.principalId
    grantGraphPermissions: grantGraphPermissions
  }
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    blobEndpoint: storage.outputs.blobEndpoint
    queueEndpoint: storage.outputs.queueEndpoint
    tableEndpoint: storage.outputs.tableEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsConnectionString: monitoring.outputs.appInsightsConnectionString
    serviceBusFullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
    serviceBusQueueName: serviceBus.outputs.queueName
    maximumInstanceCount: maximumInstanceCount
    httpPerInstanceConcurrency: httpPerInstanceConcurrency
    microsoftAppId: appRegistration.outputs.appId
    microsoftAppTenantId: tenant().tenantId
    teamsAppId: effectiveTeamsAppId
    serviceUrl: serviceUrl
    authorityHost: authorityHost
    graphEndpoint: graphEndpoint
    tableNamePrefix: tableNamePrefix
    httpTimeoutSeconds: httpTimeoutSeconds
    retryMaxAttempts: retryMaxAttempts
    retryMaxDelaySeconds: retryMaxDelaySeconds
    maxConcurrentSends: maxConcurrentSends
    tenantSendRatePerSecond: string(tenantSendRatePerSecond)
    tenantGraphRatePerSecond: string(tenantGraphRatePerSecond)
    apiAuthMode: apiAuthMode
    apiAudience: apiAudience
    apiRequiredRole: apiRequiredRole
    reinstallAfterUninstall: reinstallAfterUninstall
    retentionDaysRequests: retentionDaysRequests
    retentionDaysNotifications: retentionDaysNotifications
    retentionDaysDeliveries: retentionDaysDeliveries
    retentionDaysFailures: retentionDaysFailures
    recipientCacheUnusedDays: recipientCacheUnusedDays
  }
}

module bot 'modules/bot.bicep' = {
  name: 'bot'
  scope: rg
  params: {
    name: '${abbrs.botServiceBotServices}${resourceToken}'
    displayName: 'Teams notifications (${environmentName})'
    tags: tags
    sku: botSku
    microsoftAppId: appRegistration.outputs.appId
    microsoftAppTenantId: tenant().tenantId
    endpoint: 'https://${functionApp.outputs.defaultHostName}/api/messages'
  }
}

// azd writes these to .azure/<env>/.env (UPPER_SNAKE); scripts/build_app_package.py reads
// TEAMS_APP_ID and MICROSOFT_APP_ID from there.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_URL string = 'https://${functionApp.outputs.defaultHostName}'
output BOT_ENDPOINT string = 'https://${functionApp.outputs.defaultHostName}/api/messages'
output BOT_NAME string = bot.outputs.name
output MICROSOFT_APP_ID string = appRegistration.outputs.appId
// Object id and uniqueName of the app registration: what `az rest ... directory/deletedItems/<id>`
// needs to purge it after deletion (docs/DEPLOYMENT.md, Remove).
output APP_REGISTRATION_OBJECT_ID string = appRegistration.outputs.objectId
output APP_REGISTRATION_UNIQUE_NAME string = appRegistration.outputs.uniqueName
output MICROSOFT_APP_TENANT_ID string = tenant().tenantId
output TEAMS_APP_ID string = effectiveTeamsAppId
output SERVICE_BUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output SERVICE_BUS_QUEUE_NAME string = serviceBus.outputs.queueName
output GRAPH_PERMISSIONS_GRANTED bool = grantGraphPermissions
output ADMIN_CONSENT_URL string = 'https://login.microsoftonline.com/${tenant().tenantId}/adminconsent?client_id=${appRegistration.outputs.appId}'
