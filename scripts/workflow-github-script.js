// Runs an actions/github-script body as the action does — an async function of `github`,
// `context`, `core` and `require` — with `github.rest.*` recorded (STANDIN_CALLS) and answered
// from the API fixture (STANDIN_API, key "rest.<namespace>.<method>"); used by
// scripts/workflow-run.
'use strict';
const fs = require('fs');

const calls = process.env.STANDIN_CALLS;
const api = process.env.STANDIN_API ? JSON.parse(fs.readFileSync(process.env.STANDIN_API, 'utf8')) : {};
const payload = process.env.STANDIN_EVENT ? JSON.parse(fs.readFileSync(process.env.STANDIN_EVENT, 'utf8')) : {};
const [owner, repo] = (process.env.STANDIN_REPOSITORY || 'lab/images').split('/');

function endpoint(namespace, method) {
  const name = `rest.${namespace}.${method}`;
  const fn = async (params) => {
    fs.appendFileSync(calls, JSON.stringify({ api: name, params: params || {} }) + '\n');
    let data = api[name];
    if (data === undefined) data = method.startsWith('list') ? [] : {};
    return { status: 200, data };
  };
  fn.endpointName = name;
  return fn;
}

const rest = new Proxy({}, {
  get: (_, namespace) => new Proxy({}, { get: (_, method) => endpoint(namespace, method) }),
});

const github = {
  rest,
  paginate: async (fn, params) => {
    const { data } = await fn(params);
    if (Array.isArray(data)) return data;
    // Endpoints whose list is one key down (workflow runs, check runs…), as Octokit unwraps.
    const lists = Object.values(data).filter(Array.isArray);
    return lists.length === 1 ? lists[0] : [];
  },
};

const number = (payload.pull_request && payload.pull_request.number) || (payload.issue && payload.issue.number);
const context = {
  payload,
  eventName: process.env.GITHUB_EVENT_NAME,
  sha: process.env.STANDIN_SHA,
  ref: `refs/heads/${process.env.GITHUB_REF_NAME}`,
  runId: Number(process.env.GITHUB_RUN_ID),
  serverUrl: process.env.GITHUB_SERVER_URL,
  apiUrl: process.env.GITHUB_API_URL,
  repo: { owner, repo },
  issue: { owner, repo, number },
};

let failed = false;
const core = {
  setOutput: (name, value) => fs.appendFileSync(process.env.GITHUB_OUTPUT, `${name}<<__EOF__\n${value}\n__EOF__\n`),
  setFailed: (message) => { failed = true; console.error(`::error::${message}`); },
  info: (m) => console.log(m),
  notice: (m) => console.log(`::notice::${m}`),
  warning: (m) => console.log(`::warning::${m}`),
  error: (m) => console.log(`::error::${m}`),
  debug: () => {},
};

const body = fs.readFileSync(process.argv[2], 'utf8');
const AsyncFunction = Object.getPrototypeOf(async function () {}).constructor;
new AsyncFunction('github', 'context', 'core', 'require', 'process', body)(github, context, core, require, process)
  .then(() => process.exit(failed ? 1 : 0))
  .catch((e) => { console.error(`::error::Unhandled error: ${e && e.stack || e}`); process.exit(1); });
