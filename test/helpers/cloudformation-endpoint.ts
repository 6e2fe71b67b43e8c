/**
 * A CloudFormation endpoint for one stack, enough for `DescribeStacks` (AWS query
 * protocol, XML), so the real SDK client in `lifeboat --stack` reads a synthesized
 * template's outputs as a deployed stack would give them. The test says what each output
 * resolves to (CloudFormation's job in AWS); an output it cannot resolve is answered
 * with a placeholder, so a CLI that needs it fails visibly.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

const xml = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

export interface CloudFormationEndpoint {
  url: string;
  /** Every Action asked for, in order. */
  actions: string[];
  close(): Promise<void>;
}

export async function startCloudFormationEndpoint(stackName: string, outputs: Record<string, string>): Promise<CloudFormationEndpoint> {
  const actions: string[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => {
      body += String(c);
    });
    req.on('end', () => {
      const form = new URLSearchParams(body);
      const action = form.get('Action') ?? '';
      actions.push(action);
      res.setHeader('content-type', 'text/xml');
      if (action !== 'DescribeStacks') {
        res.statusCode = 400;
        return res.end(
          `<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>${xml(action)} is not served here</Message></Error><RequestId>0</RequestId></ErrorResponse>`,
        );
      }
      if (form.get('StackName') !== stackName) {
        res.statusCode = 400;
        return res.end(
          `<ErrorResponse><Error><Type>Sender</Type><Code>ValidationError</Code><Message>Stack with id ${xml(form.get('StackName') ?? '')} does not exist</Message></Error><RequestId>0</RequestId></ErrorResponse>`,
        );
      }
      const members = Object.entries(outputs)
        .map(([k, v]) => `<member><OutputKey>${xml(k)}</OutputKey><OutputValue>${xml(v)}</OutputValue></member>`)
        .join('');
      res.end(
        `<DescribeStacksResponse xmlns="http://cloudformation.amazonaws.com/doc/2010-05-15/"><DescribeStacksResult><Stacks><member>` +
          `<StackName>${xml(stackName)}</StackName><StackId>arn:aws:cloudformation:us-east-1:000000000000:stack/${xml(stackName)}/1</StackId>` +
          `<CreationTime>2026-12-01T00:00:00Z</CreationTime><StackStatus>CREATE_COMPLETE</StackStatus><Outputs>${members}</Outputs>` +
          `</member></Stacks></DescribeStacksResult><ResponseMetadata><RequestId>0</RequestId></ResponseMetadata></DescribeStacksResponse>`,
      );
    });
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    actions,
    close: () =>
      new Promise((ok) => {
        server.closeAllConnections();
        server.close(() => ok());
      }),
  };
}

/**
 * Resolves a synthesized template's outputs against an embedded stack, as CloudFormation
 * resolves them against the deployed resources: a Ref to a state machine is its ARN, the
 * operator API's function URL is `apiUrl`, the catalog table and primary bucket their names.
 */
export function resolveOutputs(
  template: { Resources: Record<string, { Type: string }>; Outputs?: Record<string, { Value: unknown }> },
  stack: { stateMachines: Record<string, string>; table: string; bucket: string; buckets: Record<string, string>; activities: Record<string, string> },
  apiUrl: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [key, o] of Object.entries(template.Outputs ?? {})) {
    const v = o.Value as { Ref?: string; 'Fn::GetAtt'?: [string, string] } | string;
    const ref = typeof v === 'object' ? v.Ref : undefined;
    const type = ref ? template.Resources[ref]?.Type : undefined;
    if (typeof v === 'string') out[key] = v;
    else if (type === 'AWS::StepFunctions::StateMachine') out[key] = `arn:aws:states:us-east-1:000000000000:stateMachine:${ref}`;
    else if (key === 'OperatorApiUrl' && template.Resources[v['Fn::GetAtt']?.[0] ?? '']?.Type === 'AWS::Lambda::Url') out[key] = `${apiUrl}/`;
    else if (key === 'CatalogTableName' && type?.startsWith('AWS::DynamoDB::')) out[key] = stack.table;
    else if (key === 'RepositoryBucketName' && type === 'AWS::S3::Bucket') out[key] = stack.bucket;
    else if (key === 'RepositoryBuckets') out[key] = JSON.stringify(stack.buckets);
    // ActivityArn<group id without punctuation>: the embedded stack's activity of that group (named `<stack>-mover-<group>`).
    else if (type === 'AWS::StepFunctions::Activity')
      out[key] =
        Object.values(stack.activities).find((arn) => `ActivityArn${(/-mover-([A-Za-z0-9-]+)$/.exec(arn)?.[1] ?? '').replace(/[^A-Za-z0-9]/g, '')}` === key) ??
        `unresolved-${key}`;
    // No KMS here: a key ARN that names itself, for the paths that need one (they fail at KMS, saying so).
    else if (key === 'RepositoryKeyArn') out[key] = 'arn:aws:kms:us-east-1:000000000000:key/not-served-locally';
    else out[key] = `unresolved-${key}`;
  }
  return out;
}
