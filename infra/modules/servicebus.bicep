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
var serviceBusDataOwnerRoleId = '090c5cfd-751d-490a-894a-3ce6f1109419'
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

// The app's identity gets Azure Service Bus Data Owner on the queue only (not the namespace).
// - The Functions scale controller reads the queue's message count with the app's connection to
//   decide how many instances to run; reading an entity's runtime properties needs Manage rights,
//   which no Data Receiver/Sender role carries: without them scaling falls back to guesses and
//   unauthorized-access warnings (Azure/azure-functions-host#1048, Azure/Azure-Functions#2379).
// - Azure Functions lists "Azure Service Bus Data Receiver, Azure Service Bus Data Owner" for the
//   Service Bus trigger (https://learn.microsoft.com/azure/azure-functions/functions-bindings-service-bus#grant-permission-to-the-identity),
//   and Microsoft's azd Service Bus template (Azure-Samples/functions-quickstart-dotnet-azd-service-bus,
//   infra/main.bicep) grants Data Owner (plus Data Receiver) on the whole namespace for the same reason.
// Data Owner includes receive (the trigger, its dead-letter subqueue) and send (the fan-out output
// binding re-queues per-recipient items), so no other data role is needed. Scoped to the queue, it
// cannot touch any other entity of the namespace.
resource identityQueueOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(queue.id, identityPrincipalId, serviceBusDataOwnerRoleId)
  scope: queue
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', serviceBusDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

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
