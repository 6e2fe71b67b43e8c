/**
 * Names of the custom metrics the functions publish (Powertools EMF, dimensions
 * `service` and `policyId`). The CDK app's alarms and dashboard reference the same names.
 */
export const summaryMetrics = {
  oldestRecoveryPointAgeHours: 'OldestRecoveryPointAgeHours',
  vmsCommitted: 'VmsCommitted',
  vmsFailed: 'VmsFailed',
  bytesStored: 'BytesStored',
} as const;
