// Azure Bot (single-tenant, the app registration's appId) with the Microsoft Teams channel.
// The messaging endpoint is the Function App's /api/messages.
param name string
param displayName string
param tags object = {}
@allowed([
  'F0'
  'S1'
])
param sku string = 'F0'
param microsoftAppId string
param microsoftAppTenantId string
param endpoint string

resource bot 'Microsoft.BotService/botServices@2022-09-15' = {
  name: name
  location: 'global'
  tags: tags
  kind: 'azurebot'
  sku: {
    name: sku
  }
  properties: {
    displayName: displayName
    endpoint: endpoint
    msaAppId: microsoftAppId
    msaAppType: 'SingleTenant'
    msaAppTenantId: microsoftAppTenantId
  }

  resource teams 'channels@2022-09-15' = {
    name: 'MsTeamsChannel'
    location: 'global'
    properties: {
      channelName: 'MsTeamsChannel'
      properties: {
        isEnabled: true
      }
    }
  }
}

output name string = bot.name
