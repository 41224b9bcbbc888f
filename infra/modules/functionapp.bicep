// Flex Consumption plan + Function App (Python 3.11, Linux) running as the user-assigned managed
// identity. Every connection is identity-based; no app setting holds a secret.
// Shapes: https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to and the
// Azure-Samples functions-quickstart-python-azd templates (functionAppConfig).
param name string
param planName string
param location string
param tags object = {}

@description('Resource id of the user-assigned managed identity.')
param identityId string
@description('Client id of the user-assigned managed identity.')
param identityClientId string

param storageAccountName string
param blobEndpoint string
param queueEndpoint string
param tableEndpoint string
param deploymentContainerName string
param appInsightsConnectionString string
param serviceBusFullyQualifiedNamespace string
param serviceBusQueueName string

// Flex Consumption accepts 40 to 1000 ("Scale: the lowest maximum scale is currently 40; the highest
// currently supported value is 1000", https://learn.microsoft.com/azure/azure-functions/flex-consumption-plan#considerations).
@minValue(40)
@maxValue(1000)
@description('Upper bound on instances. The request rates do not depend on it: the tenant budgets are shared by all instances.')
param maximumInstanceCount int = 40
// HTTP trigger concurrency per instance. Flex Consumption's default for Python is 1 request per
// instance (https://learn.microsoft.com/azure/azure-functions/functions-concurrency#http-trigger-concurrency):
// one slow Bot Connector call would hold up every other notify, status and /api/messages request on
// that instance, and each extra concurrent request would start another instance. Our HTTP functions are
// async (they await I/O on one event loop), so one instance serves many at once; sends inside them stay
// bounded by MaxConcurrentSends and the rate limits whatever this is.
@minValue(1)
@maxValue(1000)
param httpPerInstanceConcurrency int = 16
@allowed([
  2048
  4096
])
param instanceMemoryMB int = 2048

param microsoftAppId string
param microsoftAppTenantId string
param teamsAppId string
param serviceUrl string
param authorityHost string
param graphEndpoint string
param tableNamePrefix string
param httpTimeoutSeconds string
param retryMaxAttempts string
param retryMaxDelaySeconds string
@description('Sends in flight per instance; the tenant\'s whole request budgets, shared by all instances through Table Storage (docs/API.md, Rate limits).')
param maxConcurrentSends string = '8'
param tenantSendRatePerSecond string
param tenantGraphRatePerSecond string
@description('Who may call the HTTP API (docs/API.md, Who may call the API): FunctionKey, or EntraId (bearer tokens for apiAudience with the app role apiRequiredRole).')
@allowed([
  'FunctionKey'
  'EntraId'
])
param apiAuthMode string = 'FunctionKey'
@description('The API\'s Application ID URI (api://<client id>); required with apiAuthMode EntraId.')
param apiAudience string = ''
param apiRequiredRole string = 'Notifications.Send'
@description('true: a user who uninstalled the bot gets it installed again by the next send; false: recipient_opted_out until they install it.')
param reinstallAfterUninstall string = 'true'
@description('Days rows are kept after their last write, per table (0 = forever); cache entries: days unused.')
param retentionDaysRequests string = '30'
param retentionDaysNotifications string = '30'
param retentionDaysDeliveries string = '30'
param retentionDaysFailures string = '30'
param recipientCacheUnusedDays string = '30'

// Every app setting of the Function App. tests/test_infra.py parses the keys of this object and
// checks them against shared/settings.py SETTING_NAMES.
var appSettings = {
  // Functions host storage, identity-based (user-assigned identity).
  AzureWebJobsStorage__accountName: storageAccountName
  AzureWebJobsStorage__blobServiceUri: blobEndpoint
  AzureWebJobsStorage__queueServiceUri: queueEndpoint
  AzureWebJobsStorage__tableServiceUri: tableEndpoint
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // Service Bus trigger connection, identity-based.
  ServiceBusConnection__fullyQualifiedNamespace: serviceBusFullyQualifiedNamespace
  ServiceBusConnection__credential: 'managedidentity'
  ServiceBusConnection__clientId: identityClientId
  ServiceBusQueueName: serviceBusQueueName
  // Application Insights with Entra (managed identity) ingestion; local auth is disabled.
  APPLICATIONINSIGHTS_CONNECTION_STRING: appInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // Bot / Graph identity: secretless. The code gets a managed-identity token for
  // api://AzureADTokenExchange and uses it as the client assertion of MicrosoftAppId.
  MicrosoftAppId: microsoftAppId
  MicrosoftAppTenantId: microsoftAppTenantId
  MicrosoftAppType: 'SingleTenant'
  ManagedIdentityClientId: identityClientId
  TeamsAppId: teamsAppId
  ServiceUrl: serviceUrl
  AuthorityHost: authorityHost
  GraphEndpoint: graphEndpoint
  TableNamePrefix: tableNamePrefix
  HttpTimeoutSeconds: httpTimeoutSeconds
  RetryMaxAttempts: retryMaxAttempts
  RetryMaxDelaySeconds: retryMaxDelaySeconds
  MaxConcurrentSends: maxConcurrentSends
  TenantSendRatePerSecond: tenantSendRatePerSecond
  TenantGraphRatePerSecond: tenantGraphRatePerSecond
  // Who may call the API, and the recipients' side (docs/API.md: Who may call the API; Recipients).
  // The HMAC key of notification ids (NotificationSigningKey) is not provisioned: without it the app
  // generates one and keeps it in its own Table Storage; set it as a Key Vault reference to manage it.
  ApiAuthMode: apiAuthMode
  ApiAudience: apiAudience
  ApiRequiredRole: apiRequiredRole
  ReinstallAfterUninstall: reinstallAfterUninstall
  RetentionDaysRequests: retentionDaysRequests
  RetentionDaysNotifications: retentionDaysNotifications
  RetentionDaysDeliveries: retentionDaysDeliveries
  RetentionDaysFailures: retentionDaysFailures
  RecipientCacheUnusedDays: recipientCacheUnusedDays
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'api'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
        triggers: {
          http: {
            perInstanceConcurrency: httpPerInstanceConcurrency
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }

  resource appSettingsConfig 'config' = {
    name: 'appsettings'
    properties: appSettings
  }

  // No publishing passwords: azd deploys with the signed-in Entra identity.
  resource ftpCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'ftp'
    properties: {
      allow: false
    }
  }

  resource scmCredentials 'basicPublishingCredentialsPolicies' = {
    name: 'scm'
    properties: {
      allow: false
    }
  }
}

output name string = site.name
output id string = site.id
output defaultHostName string = site.properties.defaultHostName
