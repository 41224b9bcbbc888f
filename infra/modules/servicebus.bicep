// Service Bus namespace (local SAS auth disabled) and the queue the Service Bus trigger reads.
param name string
param location string
param tags object = {}
param sku string = 'Standard'
param queueName string = 'notifications'
param identityPrincipalId string
@description('Optional object id of the deployer; gets Data Sender to send test messages.')
param deployerPrincipalId string = ''

// Built-in roles. Source: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/integration
var serviceBusDataReceiverRoleId = '4f6d3b9b-027b-4f4c-9142-0e5a2a2247e0'
var serviceBusDataSenderRoleId = '69a216fc-b8fb-44d8-bc22-1f3c2cd27a39'

resource namespace 'Microsoft.ServiceBus/namespaces@2022-10-01-preview' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: sku
    tier: sku
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
  }
}

resource queue 'Microsoft.ServiceBus/namespaces/queues@2022-10-01-preview' = {
  parent: namespace
  name: queueName
  properties: {
    lockDuration: 'PT5M'
    maxDeliveryCount: 10
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

// Receiver: the queue trigger. Sender: replaying dead-lettered messages from the app.
var identityRoleIds = [
  serviceBusDataReceiverRoleId
  serviceBusDataSenderRoleId
]

resource identityRoles 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in identityRoleIds: {
    name: guid(namespace.id, identityPrincipalId, roleId)
    scope: namespace
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: identityPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource deployerSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(namespace.id, deployerPrincipalId, serviceBusDataSenderRoleId)
  scope: namespace
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataSenderRoleId)
    principalId: deployerPrincipalId
  }
}

output name string = namespace.name
// serviceBusEndpoint is https://<name>.servicebus.windows.net:443/ (cloud-specific suffix).
output fullyQualifiedNamespace string = split(replace(replace(namespace.properties.serviceBusEndpoint, 'https:', ''), '/', ''), ':')[0]
output queueName string = queue.name
