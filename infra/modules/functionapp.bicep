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

@minValue(1)
@maxValue(1000)
@description('Upper bound on instances; with host.json maxConcurrentCalls it bounds the global send rate (Teams rate limits).')
param maximumInstanceCount int = 4
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
@description('The tenant\'s whole request budgets, shared by all instances through Table Storage (README, Rate limits): Teams allows 30-50 Bot Connector requests per second per app per tenant.')
param maxConcurrentSends string = '8'
param tenantSendRatePerSecond string = '30'
param tenantGraphRatePerSecond string = '30'

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
