// Storage for the Functions host (AzureWebJobsStorage), the Flex Consumption deployment package
// container and the app's Table Storage tables. Shared keys are disabled: every client uses the
// managed identity.
param name string
param location string
param tags object = {}
param deploymentContainerName string
param identityPrincipalId string
@description('Optional object id of the deployer (azd AZURE_PRINCIPAL_ID); gets Storage Table Data Contributor so the operator CLI can read and repair the app tables. Empty: no grant.')
param deployerPrincipalId string = ''

// Built-in roles. Source: https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: account
  name: 'default'
}

var roleIds = [
  storageBlobDataOwnerRoleId // host storage + deployment package container
  storageTableDataContributorRoleId // ChannelAccount store, idempotency records
  storageQueueDataContributorRoleId // host internals (blob trigger receipts, poison queues)
]

resource roleAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for roleId in roleIds: {
    name: guid(account.id, identityPrincipalId, roleId)
    scope: account
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roleId)
      principalId: identityPrincipalId
      principalType: 'ServicePrincipal'
    }
  }
]

// The operator (docs/OPERATIONS.md) runs the CLI against the app's tables as themselves: table data
// only, no blob or queue rights, no shared key (it is disabled).
resource deployerTables 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(deployerPrincipalId)) {
  name: guid(account.id, deployerPrincipalId, storageTableDataContributorRoleId)
  scope: account
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: deployerPrincipalId
  }
}

output name string = account.name
output blobEndpoint string = account.properties.primaryEndpoints.blob
output queueEndpoint string = account.properties.primaryEndpoints.queue
output tableEndpoint string = account.properties.primaryEndpoints.table
output deploymentContainerName string = deploymentContainer.name
