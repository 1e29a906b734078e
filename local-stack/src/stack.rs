//! The local stack: provision, build, run the functions, start the mappings and routes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::api::{Endpoint, HttpRoute};
use crate::chaos::Chaos;
use crate::http::{Server, serve_on};
use crate::invoke::Invoke;
use crate::mapping::Activity;
use crate::mapping::control::{Controls, MappingControl};
use crate::mapping::queue::QueuePoller;
use crate::mapping::stream::{StreamClients, StreamPoller, shard_ids};
use crate::provision::{Clients, Provisioned, provision, rule_to_function};
use crate::proxy::Proxy;
use crate::runtime::LocalFunction;
use crate::scaling::Scaling;
use crate::spec::{EventSource, FunctionSpec};
use crate::template::Template;

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct Options {
    /// The workspace (where cargo builds the functions).
    pub root: PathBuf,
    /// The SAM template.
    pub template: PathBuf,
    /// The stack's name (prefixes every resource).
    pub stack: String,
    /// The HTTP API's port on 127.0.0.1 (0: any free port).
    pub api_port: u16,
    /// Where the functions' logs go, one file each.
    pub log_dir: PathBuf,
    /// Instances, shards, parallelization and queue concurrency (see [`Scaling`]).
    pub scaling: Scaling,
    /// Build the functions with cargo's release profile, as deployed.
    pub release: bool,
    /// Fault injection between the functions and the emulator: rate (0 to 1) and seed.
    pub chaos: Option<(f64, u64)>,
    /// Writes throttled for good: (operation, text in the request), e.g.
    /// `("DynamoDB.PutItem", "\"thing-5\"")` (see [`Chaos::always_throttle`]).
    pub always_throttle: Vec<(String, String)>,
    /// Template parameters set for this run, after [`LOCAL_PARAMETERS`] (as
    /// `sam deploy --parameter-overrides` would).
    pub parameters: Vec<(String, String)>,
}

/// Parameters a local run sets unless told otherwise: time-based rules shortened so that a
/// demo sees them fire (a thing is stale after 20 seconds, not 7 days).
pub const LOCAL_PARAMETERS: &[(&str, &str)] = &[("StaleAfterSeconds", "20")];

/// A running local stack.
pub struct Stack {
    /// Resource names and ARNs.
    pub provisioned: Provisioned,
    /// The running functions.
    pub functions: Vec<Arc<LocalFunction>>,
    /// The HTTP API and Lambda Invoke endpoint.
    pub api: SocketAddr,
    /// What each mapping and route has done.
    pub activity: Arc<Activity>,
    /// Clients on the emulator.
    pub clients: Clients,
    /// The fault injection, when on.
    pub chaos: Option<Arc<Chaos>>,
    /// What stands between the functions and the emulator (it counts the writes applied).
    pub proxy: Arc<Proxy>,
    /// The event source mappings, as `UpdateEventSourceMapping` left them.
    pub mappings: Arc<Controls>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _server: Server,
    _proxies: Vec<Server>,
}

/// The emulator's endpoint from `AWS_ENDPOINT_URL`; the local stack refuses anything but
/// loopback, so it can never create resources in a real account.
pub fn emulator_endpoint() -> Result<String, Error> {
    let url = std::env::var("AWS_ENDPOINT_URL").map_err(|_| {
        Error::Other(
            "AWS_ENDPOINT_URL is not set: run through `make up` / `make demo`, or `scripts/with-emulator.sh`, which start the emulator"
                .into(),
        )
    })?;
    let host = url
        .split("://")
        .nth(1)
        .unwrap_or_default()
        .split(['/', ':'])
        .next()
        .unwrap_or_default();
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(Error::Other(format!(
            "AWS_ENDPOINT_URL={url} is not on this machine; the local stack only provisions into a local emulator"
        )));
    }
    Ok(url)
}

/// The emulator's AWS configuration.
pub async fn emulator_config() -> Result<aws_config::SdkConfig, Error> {
    emulator_endpoint()?;
    Ok(aws_config::defaults(BehaviorVersion::latest()).load().await)
}

impl Stack {
    /// Provisions, builds and starts everything; `progress` hears each step.
    pub async fn start(opts: &Options, progress: &(dyn Fn(&str) + Sync)) -> Result<Self, Error> {
        let config = emulator_config().await?;
        let (rate, seed) = opts.chaos.unwrap_or((0.0, 1));
        let chaos = (rate > 0.0 || !opts.always_throttle.is_empty()).then(|| {
            let chaos = opts
                .always_throttle
                .iter()
                .fold(Chaos::new(rate, seed), |c, (op, text)| {
                    c.always_throttle(op.clone(), text.clone())
                });
            Arc::new(chaos)
        });
        // the functions reach the emulator through the proxy: atomic DynamoDB writes, and chaos
        // (one port per function, so that its calls are counted as its own)
        let writes = Arc::new(Proxy::new(emulator_endpoint()?, chaos.clone()));
        let mut proxies = Vec::new();
        if let Some(c) = chaos.as_ref().filter(|c| c.rate() > 0.0) {
            progress(&format!(
                "chaos: {:.0}% of the functions' writes faulted (seed {}) by the proxy in front of the emulator; bus → Kinesis records duplicated and reordered",
                c.rate() * 100.0,
                opts.chaos.map_or(0, |(_, seed)| seed),
            ));
        }
        let region = config
            .region()
            .map_or("us-east-1".to_owned(), |r| r.to_string());
        let clients = Clients::new(&config);
        let mut template = Template::load(&opts.template)?;
        let overrides = LOCAL_PARAMETERS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .chain(opts.parameters.iter().cloned());
        for (name, value) in overrides {
            match template.parameters.get_mut(&name) {
                Some(v) => *v = value,
                None if opts.parameters.iter().any(|(k, _)| *k == name) => {
                    return Err(Error::Template(format!(
                        "no parameter {name} in the template"
                    )));
                }
                None => {}
            }
        }

        opts.scaling.shape_template(&mut template);
        progress("provisioning the template's resources in the emulator");
        let mut provisioned = provision(&template, &opts.stack, &region, &clients).await?;
        let mut specs = FunctionSpec::all(&template, &provisioned.names)?;
        let stream_clients = StreamClients {
            kinesis: clients.kinesis.clone(),
            streams: clients.streams.clone(),
            sqs: clients.sqs.clone(),
        };
        let mut shards = HashMap::new();
        for spec in &mut specs {
            opts.scaling.shape_function(spec);
            for event in &spec.events {
                if let EventSource::Stream(m) = event {
                    let ids = shard_ids(&stream_clients, m.kind, &m.arn).await?;
                    shards.insert(m.arn.clone(), ids.len());
                }
            }
        }

        let binaries: Vec<&str> = specs.iter().map(|s| s.binary.as_str()).collect();
        progress(&format!(
            "building {} function(s) with cargo: {}",
            binaries.len(),
            binaries.join(", ")
        ));
        let exes = crate::binaries::build(&opts.root, &binaries, opts.release).await?;

        let listener = TcpListener::bind(("127.0.0.1", opts.api_port)).await?;
        let api = listener.local_addr()?;
        progress(&format!(
            "starting the functions (logs in {})",
            opts.log_dir.display()
        ));
        let mut functions = Vec::new();
        let mut counts = Vec::new();
        for mut spec in specs {
            spec.environment
                .insert("AWS_ENDPOINT_URL_LAMBDA".into(), format!("http://{api}"));
            let proxy = writes.serve(&spec.logical_id).await?;
            spec.environment
                .insert("AWS_ENDPOINT_URL".into(), format!("http://{}", proxy.addr));
            proxies.push(proxy);
            let exe = exes
                .get(&spec.binary)
                .ok_or_else(|| Error::Other(format!("no binary for {}", spec.name)))?;
            let instances = opts
                .scaling
                .instances(&spec, |arn| shards.get(arn).copied().unwrap_or(1));
            counts.push(format!("{} ×{instances}", spec.logical_id));
            functions.push(LocalFunction::start(spec, exe, &opts.log_dir, instances).await?);
        }
        progress(&format!("instances: {}", counts.join(", ")));
        let by_key: HashMap<String, Arc<LocalFunction>> = functions
            .iter()
            .flat_map(|f| {
                [
                    (f.spec().name.clone(), Arc::clone(f)),
                    (f.spec().arn.clone(), Arc::clone(f)),
                ]
            })
            .collect();

        let (stop, stopped) = watch::channel(false);
        let activity = Arc::new(Activity::default());
        let mut tasks = Vec::new();
        let mut routes = Vec::new();
        let controls = Arc::new(Controls::default());
        let mut mappings = 0;
        for f in &functions {
            let function: Arc<dyn Invoke> = Arc::clone(f) as Arc<dyn Invoke>;
            for event in &f.spec().events {
                let stopped = stopped.clone();
                match event {
                    EventSource::Stream(m) => {
                        mappings += 1;
                        let control = Arc::new(MappingControl::new(
                            &f.spec().name,
                            &f.spec().arn,
                            &m.arn,
                            m.batch_size,
                        ));
                        controls.add(Arc::clone(&control));
                        let poller = Arc::new(StreamPoller {
                            control,
                            mapping: m.clone(),
                            function: Arc::clone(&function),
                            clients: stream_clients.clone(),
                            activity: Arc::clone(&activity),
                            region: region.clone(),
                            chaos: chaos.clone(),
                        });
                        tasks.push(tokio::spawn(async move {
                            if let Err(e) = poller.run(stopped).await {
                                tracing::error!(error = %e, "stream mapping stopped");
                            }
                        }));
                    }
                    EventSource::Queue(m) => {
                        mappings += 1;
                        let control = Arc::new(MappingControl::new(
                            &f.spec().name,
                            &f.spec().arn,
                            &m.arn,
                            m.batch_size,
                        ));
                        controls.add(Arc::clone(&control));
                        let poller = Arc::new(QueuePoller {
                            control,
                            mapping: m.clone(),
                            function: Arc::clone(&function),
                            sqs: clients.sqs.clone(),
                            activity: Arc::clone(&activity),
                            region: region.clone(),
                        });
                        tasks.push(tokio::spawn(async move {
                            if let Err(e) = poller.run(stopped).await {
                                tracing::error!(error = %e, "queue mapping stopped");
                            }
                        }));
                    }
                    EventSource::Rule { id, bus, pattern } => {
                        let rule = format!("{}-{}", f.spec().name, id);
                        routes.push(
                            rule_to_function(&clients, &region, &rule, bus, pattern, &f.spec().arn)
                                .await?,
                        );
                    }
                    EventSource::Http { .. } => {}
                }
            }
        }
        let expiring = crate::ttl::tables(&template, &provisioned.names)?;
        if !expiring.is_empty() {
            let (db, stopped) = (clients.dynamodb.clone(), stopped.clone());
            tasks.push(tokio::spawn(crate::ttl::run(db, expiring, stopped)));
        }
        routes.extend(provisioned.routes.iter().cloned());
        provisioned.routes = routes.clone();
        let by_key = Arc::new(by_key);
        for route in routes {
            let (kinesis, sqs) = (clients.kinesis.clone(), clients.sqs.clone());
            let (functions, activity, stopped) =
                (Arc::clone(&by_key), Arc::clone(&activity), stopped.clone());
            let chaos = chaos.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) =
                    crate::routes::drain(route, kinesis, sqs, functions, activity, chaos, stopped)
                        .await
                {
                    tracing::error!(error = %e, "route stopped");
                }
            }));
        }
        let http_routes: Vec<HttpRoute> = functions
            .iter()
            .flat_map(|f| {
                f.spec().events.iter().filter_map(|e| match e {
                    EventSource::Http { method, path } => Some(HttpRoute {
                        method: method.clone(),
                        path: path.clone(),
                        function: Arc::clone(f),
                    }),
                    _ => None,
                })
            })
            .collect();
        let endpoint = Arc::new(Endpoint {
            routes: http_routes,
            functions: (*by_key).clone(),
            sqs: clients.sqs.clone(),
            mappings: Arc::clone(&controls),
        });
        let server = serve_on(listener, move |req| {
            let endpoint = Arc::clone(&endpoint);
            async move { endpoint.handle(req).await }
        })?;
        progress(&format!(
            "running: {} function(s), {mappings} event source mapping(s), {} rule route(s); HTTP API and Lambda Invoke API on http://{api}",
            functions.len(),
            provisioned.routes.len()
        ));
        Ok(Self {
            provisioned,
            functions,
            api,
            activity,
            clients,
            chaos,
            proxy: writes,
            mappings: controls,
            stop,
            tasks,
            _server: server,
            _proxies: proxies,
        })
    }

    /// Stops the mappings, routes and every function process, and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            // a poller in a long poll notices within a second; do not wait forever on one
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(3), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        for f in &self.functions {
            f.stop().await;
        }
    }
}
