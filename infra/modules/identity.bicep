// The user-assigned managed identity the Function App runs as. It is the credential for storage,
// Service Bus, Application Insights, the deployment container, and (through the app registration's
// federated identity credential) for Microsoft Graph and the Bot Connector.
param name string
param location string
param tags object = {}

resource uami 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = uami.id
output name string = uami.name
output principalId string = uami.properties.principalId
output clientId string = uami.properties.clientId
