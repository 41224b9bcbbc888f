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

@description('Object id of the deploying user (azd sets AZURE_PRINCIPAL_ID); gets Service Bus Data Sender so it can send test messages. Empty: no grant.')
param principalId string = ''

@description('Grant the Graph application permissions (admin consent) in the deployment. Needs a deployer with Privileged Role Administrator or Global Administrator; otherwise leave false and consent once in the portal.')
param grantGraphPermissions bool = false

@description('Teams app manifest id (the org catalog externalId). Empty: a deterministic GUID derived from subscription and environment, which the app package build reads back from the TEAMS_APP_ID output.')
param teamsAppId string = ''

@minValue(1)
@maxValue(1000)
@description('Upper bound on Function App instances. The send rate does not depend on it: TenantSendRatePerSecond is the whole tenant budget, shared by all instances.')
param maximumInstanceCount int = 4

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
@description('Bot Connector requests per second per tenant, the whole deployment\'s budget shared by all instances (app setting TenantSendRatePerSecond).')
param tenantSendRatePerSecond string = '30'
@description('Graph requests per second per tenant (cold resolutions), the whole deployment\'s budget shared by all instances (app setting TenantGraphRatePerSecond).')
param tenantGraphRatePerSecond string = '30'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var effectiveTeamsAppId = empty(teamsAppId) ? guid(subscription().id, environmentName, 'teams-app-manifest') : teamsAppId
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'

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
    uniqueName: '${abbrs.entraApplications}teams-notify-${resourceToken}'
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
    tenantSendRatePerSecond: tenantSendRatePerSecond
    tenantGraphRatePerSecond: tenantGraphRatePerSecond
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
output MICROSOFT_APP_TENANT_ID string = tenant().tenantId
output TEAMS_APP_ID string = effectiveTeamsAppId
output SERVICE_BUS_NAMESPACE string = serviceBus.outputs.fullyQualifiedNamespace
output SERVICE_BUS_QUEUE_NAME string = serviceBus.outputs.queueName
output GRAPH_PERMISSIONS_GRANTED bool = grantGraphPermissions
output ADMIN_CONSENT_URL string = 'https://login.microsoftonline.com/${tenant().tenantId}/adminconsent?client_id=${appRegistration.outputs.appId}'
