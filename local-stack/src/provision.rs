//! Creates what `template.yaml` declares in the emulator and records the names and ARNs that
//! the template's intrinsics resolve to.
//!
//! Tables (with streams and TTL), Kinesis streams, SQS queues (with redrive policies), S3
//! buckets, event buses and rules are created; roles, log groups and policies are only named
//! (the emulator does not enforce them). Rule targets the emulator cannot deliver to (Kinesis,
//! Lambda) get a shadow SQS queue instead, which [`crate::routes`] drains.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, StreamSpecification, StreamViewType,
    TimeToLiveSpecification,
};
use aws_sdk_eventbridge::types::Target;
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

use crate::Error;
use crate::template::{ACCOUNT, Names, Template};

/// The clients provisioning needs.
#[derive(Clone)]
pub struct Clients {
    /// DynamoDB.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// Kinesis.
    pub kinesis: aws_sdk_kinesis::Client,
    /// SQS.
    pub sqs: aws_sdk_sqs::Client,
    /// S3 (path-style).
    pub s3: aws_sdk_s3::Client,
    /// EventBridge.
    pub eventbridge: aws_sdk_eventbridge::Client,
    /// DynamoDB Streams.
    pub streams: aws_sdk_dynamodbstreams::Client,
    /// SSM Parameter Store.
    pub ssm: aws_sdk_ssm::Client,
}

impl Clients {
    /// Clients for `config` (S3 path-style, as emulators need).
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        let s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(true)
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            kinesis: aws_sdk_kinesis::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3),
            eventbridge: aws_sdk_eventbridge::Client::new(config),
            streams: aws_sdk_dynamodbstreams::Client::new(config),
            ssm: aws_sdk_ssm::Client::new(config),
        }
    }
}

/// A rule target the emulator cannot deliver to, delivered through a shadow queue.
#[derive(Debug, Clone)]
pub struct Route {
    /// `Rule/TargetId`, for logs.
    pub name: String,
    /// The real target's ARN (a Kinesis stream or a function).
    pub target_arn: String,
    /// The target's `InputPath` (for example `$.detail`).
    pub input_path: Option<String>,
    /// For a Kinesis target: `KinesisParameters.PartitionKeyPath`.
    pub partition_key_path: Option<String>,
    /// The shadow queue's URL.
    pub queue_url: String,
}

/// One resource created (or named) for the stack.
#[derive(Debug, Clone)]
pub struct Created {
    /// Logical id.
    pub logical_id: String,
    /// Resource type.
    pub kind: String,
    /// Its physical name.
    pub name: String,
}

/// What provisioning produced.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// Names and attributes, for resolving the rest of the template.
    pub names: Names,
    /// Rule targets delivered through shadow queues.
    pub routes: Vec<Route>,
    /// What was created, in order.
    pub created: Vec<Created>,
}

fn physical(names: &Names, props: &Value, field: &str, id: &str) -> Result<String, Error> {
    match props.get(field) {
        Some(v) => names.string(v),
        None => Ok(format!("{}-{id}", names.stack())),
    }
}

fn arn(service: &str, region: &str, rest: &str) -> String {
    format!("arn:aws:{service}:{region}:{ACCOUNT}:{rest}")
}

/// The names and ARNs resources would get, without creating anything: for running a handler
/// in-process with the environment the template gives it.
pub fn names_only(template: &Template, stack: &str, region: &str) -> Result<Names, Error> {
    let mut names = Names::new(template, stack, region);
    for (id, r) in &template.resources {
        let p = &r.properties;
        let (field, service, rest): (&str, &str, fn(&str) -> String) = match r.kind.as_str() {
            "AWS::IAM::Role" => ("RoleName", "iam", |n| format!("role/{n}")),
            "AWS::Logs::LogGroup" => ("LogGroupName", "logs", |n| format!("log-group:{n}")),
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                ("FunctionName", "lambda", |n| format!("function:{n}"))
            }
            "AWS::DynamoDB::Table" => ("TableName", "dynamodb", |n| format!("table/{n}")),
            "AWS::Kinesis::Stream" => ("Name", "kinesis", |n| format!("stream/{n}")),
            "AWS::S3::Bucket" => ("BucketName", "s3", |n| n.to_owned()),
            "AWS::Events::EventBus" => ("Name", "events", |n| format!("event-bus/{n}")),
            "AWS::Events::Rule" => ("Name", "events", |n| format!("rule/{n}")),
            "AWS::SQS::Queue" => ("QueueName", "sqs", |n| n.to_owned()),
            _ => continue,
        };
        let mut name = physical(&names, p, field, id)?;
        if service == "s3" {
            name = name.to_ascii_lowercase();
        }
        let resource_arn = match service {
            "s3" => format!("arn:aws:s3:::{name}"),
            "iam" => format!("arn:aws:iam::{ACCOUNT}:{}", rest(&name)),
            _ => arn(service, region, &rest(&name)),
        };
        if service == "dynamodb" {
            names.set_attr(id, "StreamArn", format!("{resource_arn}/stream/local"));
        }
        names.set_attr(id, "Arn", resource_arn);
        if service == "sqs" {
            let url = format!("https://sqs.{region}.amazonaws.com/{ACCOUNT}/{name}");
            names.set_attr(id, "QueueName", &name);
            names.set_ref(id, url);
        } else {
            names.set_ref(id, name);
        }
    }
    Ok(names)
}

/// Creating a resource where "it exists already" (the SDK's own error variant, not its text)
/// is a success: `None` then.
fn created<T, E, R>(
    result: Result<T, aws_smithy_runtime_api::client::result::SdkError<E, R>>,
    exists: impl FnOnce(&E) -> bool,
) -> Result<Option<T>, Error>
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match result {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.as_service_error().is_some_and(exists) => Ok(None),
        Err(e) => Err(Error::aws(e)),
    }
}

/// What one resource became: its physical name, and the attributes the template can read.
struct Made {
    name: String,
    reference: String,
    attributes: Vec<(&'static str, String)>,
}

impl Made {
    fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        Made {
            reference: name.clone(),
            name,
            attributes: Vec::new(),
        }
    }

    fn attr(mut self, attribute: &'static str, value: impl Into<String>) -> Self {
        self.attributes.push((attribute, value.into()));
        self
    }
}

/// Provisions every resource of `template` for `stack` in the emulator behind `clients`.
pub async fn provision(
    template: &Template,
    stack: &str,
    region: &str,
    clients: &Clients,
) -> Result<Provisioned, Error> {
    let mut names = Names::new(template, stack, region);
    let mut created = Vec::new();
    parameters(template, clients).await?;
    for (param, value) in &template.parameters {
        if param.ends_with("Parameter") && value.starts_with('/') {
            created.push(Created {
                logical_id: param.clone(),
                kind: "AWS::SSM::Parameter".into(),
                name: value.clone(),
            });
        }
    }
    // names that need nothing created
    for (id, r) in &template.resources {
        let p = &r.properties;
        let (field, rest): (&str, fn(&str, &str) -> String) = match r.kind.as_str() {
            "AWS::IAM::Role" => ("RoleName", |_, n| {
                format!("arn:aws:iam::{ACCOUNT}:role/{n}")
            }),
            "AWS::Logs::LogGroup" => ("LogGroupName", |region, n| {
                arn("logs", region, &format!("log-group:{n}"))
            }),
            "AWS::Serverless::Function" | "AWS::Lambda::Function" => {
                ("FunctionName", |region, n| {
                    arn("lambda", region, &format!("function:{n}"))
                })
            }
            _ => continue,
        };
        let name = physical(&names, p, field, id)?;
        names.set_attr(id, "Arn", rest(region, &name));
        names.set_ref(id, name);
    }
    for (id, r) in &template.resources {
        let p = &r.properties;
        let kind = r.kind.as_str();
        let made = match kind {
            "AWS::DynamoDB::Table" => {
                table(clients, physical(&names, p, "TableName", id)?, p).await
            }
            "AWS::Kinesis::Stream" => {
                stream(clients, region, physical(&names, p, "Name", id)?, p).await
            }
            "AWS::S3::Bucket" => bucket(clients, physical(&names, p, "BucketName", id)?).await,
            "AWS::Events::EventBus" => bus(clients, region, physical(&names, p, "Name", id)?).await,
            "AWS::SQS::Queue" => {
                queue(
                    clients,
                    region,
                    &names,
                    physical(&names, p, "QueueName", id)?,
                    p,
                )
                .await
            }
            _ => continue,
        }
        .map_err(|source| Error::Provision {
            resource: id.clone(),
            kind: r.kind.clone(),
            source: Box::new(source),
        })?;
        for (attribute, value) in made.attributes {
            names.set_attr(id, attribute, value);
        }
        names.set_ref(id, made.reference);
        created.push(Created {
            logical_id: id.clone(),
            kind: r.kind.clone(),
            name: made.name,
        });
    }
    // redrive policies name other queues, so they are set once every queue exists
    for (id, r) in template.of_kind("AWS::SQS::Queue") {
        if let Some(policy) = r.properties.get("RedrivePolicy") {
            let policy = names.resolve(policy)?;
            let url = names.get_ref(id).unwrap_or_default().to_owned();
            clients
                .sqs
                .set_queue_attributes()
                .queue_url(url)
                .attributes(QueueAttributeName::RedrivePolicy, policy.to_string())
                .send()
                .await
                .map_err(Error::aws)?;
        }
    }
    let mut routes = Vec::new();
    for (id, r) in template.of_kind("AWS::Events::Rule") {
        let name = physical(&names, &r.properties, "Name", id)?;
        let (rule_arn, rule_routes) = rule(clients, region, &names, id, &name, &r.properties)
            .await
            .map_err(|source| Error::Provision {
                resource: id.to_owned(),
                kind: r.kind.clone(),
                source: Box::new(source),
            })?;
        names.set_attr(id, "Arn", rule_arn);
        names.set_ref(id, &name);
        routes.extend(rule_routes);
        created.push(Created {
            logical_id: id.to_owned(),
            kind: r.kind.clone(),
            name,
        });
    }
    Ok(Provisioned {
        names,
        routes,
        created,
    })
}

/// A parameter that names an SSM parameter (`...Parameter: /path`) gets a local SecureString,
/// so functions that read a secret at start-up find one.
async fn parameters(template: &Template, clients: &Clients) -> Result<(), Error> {
    for (param, value) in &template.parameters {
        if param.ends_with("Parameter") && value.starts_with('/') {
            let put = clients
                .ssm
                .put_parameter()
                .name(value)
                .value(format!("local-{}", param.to_ascii_lowercase()))
                .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
                .send()
                .await;
            created(put, |e| e.is_parameter_already_exists())?;
        }
    }
    Ok(())
}

async fn table(clients: &Clients, name: String, p: &Value) -> Result<Made, Error> {
    let (table_arn, stream_arn) = create_table(clients, &name, p).await?;
    let mut made = Made::new(name).attr("Arn", table_arn);
    if let Some(s) = stream_arn {
        made = made.attr("StreamArn", s);
    }
    Ok(made)
}

async fn stream(clients: &Clients, region: &str, name: String, p: &Value) -> Result<Made, Error> {
    let shards = p.get("ShardCount").and_then(Value::as_i64).unwrap_or(1) as i32;
    let create = clients
        .kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await;
    created(create, |e| e.is_resource_in_use_exception())?;
    let stream_arn = arn("kinesis", region, &format!("stream/{name}"));
    Ok(Made::new(name).attr("Arn", stream_arn))
}

async fn bucket(clients: &Clients, name: String) -> Result<Made, Error> {
    let name = name.to_ascii_lowercase();
    let create = clients.s3.create_bucket().bucket(&name).send().await;
    created(create, |e| {
        e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
    })?;
    let bucket_arn = format!("arn:aws:s3:::{name}");
    Ok(Made::new(name).attr("Arn", bucket_arn))
}

async fn bus(clients: &Clients, region: &str, name: String) -> Result<Made, Error> {
    let create = clients
        .eventbridge
        .create_event_bus()
        .name(&name)
        .send()
        .await;
    created(create, |e| e.is_resource_already_exists_exception())?;
    let bus_arn = arn("events", region, &format!("event-bus/{name}"));
    Ok(Made::new(name).attr("Arn", bus_arn))
}

async fn queue(
    clients: &Clients,
    region: &str,
    names: &Names,
    mut name: String,
    p: &Value,
) -> Result<Made, Error> {
    let fifo = p.get("FifoQueue").and_then(Value::as_bool) == Some(true);
    if fifo && !name.ends_with(".fifo") {
        name.push_str(".fifo");
    }
    let mut req = clients.sqs.create_queue().queue_name(&name);
    for (field, attr) in [
        ("VisibilityTimeout", QueueAttributeName::VisibilityTimeout),
        (
            "MessageRetentionPeriod",
            QueueAttributeName::MessageRetentionPeriod,
        ),
        ("DelaySeconds", QueueAttributeName::DelaySeconds),
        ("FifoQueue", QueueAttributeName::FifoQueue),
        (
            "ContentBasedDeduplication",
            QueueAttributeName::ContentBasedDeduplication,
        ),
    ] {
        if let Some(v) = p.get(field) {
            req = req.attributes(attr, names.string(v)?);
        }
    }
    let url = req
        .send()
        .await
        .map_err(Error::aws)?
        .queue_url()
        .unwrap_or_default()
        .to_owned();
    let queue_arn = arn("sqs", region, &name);
    let mut made = Made::new(&name)
        .attr("Arn", queue_arn)
        .attr("QueueName", &name)
        .attr("QueueUrl", &url);
    made.reference = url;
    Ok(made)
}

/// A rule and its targets; targets the emulator cannot deliver to get a shadow queue (a route).
async fn rule(
    clients: &Clients,
    region: &str,
    names: &Names,
    id: &str,
    name: &str,
    p: &Value,
) -> Result<(String, Vec<Route>), Error> {
    let bus = match p.get("EventBusName") {
        Some(v) => names.string(v)?,
        None => "default".to_owned(),
    };
    let pattern = names.resolve(p.get("EventPattern").unwrap_or(&Value::Null))?;
    let rule_arn = put_rule(clients, name, &bus, &pattern).await?;
    let mut routes = Vec::new();
    for t in p
        .get("Targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let target_id = t.get("Id").and_then(Value::as_str).unwrap_or("target");
        let target_arn = names.string(t.get("Arn").unwrap_or(&Value::Null))?;
        let input_path = t
            .get("InputPath")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if target_arn.contains(":sqs:") {
            let mut target = Target::builder().id(target_id).arn(&target_arn);
            if let Some(path) = &input_path {
                target = target.input_path(path);
            }
            put_target(clients, name, &bus, target).await?;
            continue;
        }
        let shadow = format!("{name}-{target_id}-shadow");
        let url = create_queue(clients, &shadow).await?;
        let target = Target::builder()
            .id(target_id)
            .arn(arn("sqs", region, &shadow));
        put_target(clients, name, &bus, target).await?;
        routes.push(Route {
            name: format!("{id}/{target_id}"),
            target_arn,
            input_path,
            partition_key_path: t
                .pointer("/KinesisParameters/PartitionKeyPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
            queue_url: url,
        });
    }
    Ok((rule_arn, routes))
}

/// Creates a rule on `bus` with `pattern`; its ARN.
pub async fn put_rule(
    clients: &Clients,
    name: &str,
    bus: &str,
    pattern: &Value,
) -> Result<String, Error> {
    let out = clients
        .eventbridge
        .put_rule()
        .name(name)
        .event_bus_name(bus)
        .event_pattern(pattern.to_string())
        .send()
        .await
        .map_err(Error::aws)?;
    Ok(out.rule_arn().unwrap_or_default().to_owned())
}

/// Adds `target` to a rule.
pub async fn put_target(
    clients: &Clients,
    rule: &str,
    bus: &str,
    target: aws_sdk_eventbridge::types::builders::TargetBuilder,
) -> Result<(), Error> {
    let target = target.build().map_err(|e| Error::Other(e.to_string()))?;
    let out = clients
        .eventbridge
        .put_targets()
        .rule(rule)
        .event_bus_name(bus)
        .targets(target)
        .send()
        .await
        .map_err(Error::aws)?;
    if out.failed_entry_count() > 0 {
        return Err(Error::Other(format!(
            "rule {rule}: target not accepted: {:?}",
            out.failed_entries()
        )));
    }
    Ok(())
}

/// A shadow queue for a function's `EventBridgeRule` event: a rule on `bus` with `pattern`
/// whose target is a queue that [`crate::routes`] drains into the function.
pub async fn rule_to_function(
    clients: &Clients,
    region: &str,
    rule: &str,
    bus: &str,
    pattern: &Value,
    function_arn: &str,
) -> Result<Route, Error> {
    put_rule(clients, rule, bus, pattern).await?;
    let shadow = format!("{rule}-shadow");
    let url = create_queue(clients, &shadow).await?;
    put_target(
        clients,
        rule,
        bus,
        Target::builder()
            .id("function")
            .arn(arn("sqs", region, &shadow)),
    )
    .await?;
    Ok(Route {
        name: rule.to_owned(),
        target_arn: function_arn.to_owned(),
        input_path: None,
        partition_key_path: None,
        queue_url: url,
    })
}

/// Creates (or finds) a plain SQS queue; its URL.
async fn create_queue(clients: &Clients, name: &str) -> Result<String, Error> {
    let out = clients
        .sqs
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .map_err(Error::aws)?;
    Ok(out.queue_url().unwrap_or_default().to_owned())
}

fn key_schema(v: &Value) -> Result<Vec<KeySchemaElement>, Error> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            KeySchemaElement::builder()
                .attribute_name(k["AttributeName"].as_str().unwrap_or_default())
                .key_type(KeyType::from(k["KeyType"].as_str().unwrap_or("HASH")))
                .build()
                .map_err(|e| Error::Template(e.to_string()))
        })
        .collect()
}

fn projection(v: &Value) -> Projection {
    Projection::builder()
        .projection_type(ProjectionType::from(
            v["ProjectionType"].as_str().unwrap_or("ALL"),
        ))
        .set_non_key_attributes(v["NonKeyAttributes"].as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        }))
        .build()
}

async fn create_table(
    clients: &Clients,
    name: &str,
    p: &Value,
) -> Result<(String, Option<String>), Error> {
    let mut req = clients
        .dynamodb
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .set_key_schema(Some(key_schema(&p["KeySchema"])?));
    for a in p["AttributeDefinitions"].as_array().into_iter().flatten() {
        req = req.attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name(a["AttributeName"].as_str().unwrap_or_default())
                .attribute_type(ScalarAttributeType::from(
                    a["AttributeType"].as_str().unwrap_or("S"),
                ))
                .build()
                .map_err(|e| Error::Template(e.to_string()))?,
        );
    }
    for g in p["GlobalSecondaryIndexes"].as_array().into_iter().flatten() {
        req = req.global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(g["IndexName"].as_str().unwrap_or_default())
                .set_key_schema(Some(key_schema(&g["KeySchema"])?))
                .projection(projection(&g["Projection"]))
                .build()
                .map_err(|e| Error::Template(e.to_string()))?,
        );
    }
    if let Some(view) = p
        .pointer("/StreamSpecification/StreamViewType")
        .and_then(Value::as_str)
    {
        req = req.stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::from(view))
                .build()
                .map_err(|e| Error::Template(e.to_string()))?,
        );
    }
    let description = match created(req.send().await, |e| e.is_resource_in_use_exception())? {
        Some(out) => out.table_description,
        None => {
            clients
                .dynamodb
                .describe_table()
                .table_name(name)
                .send()
                .await
                .map_err(Error::aws)?
                .table
        }
    };
    let description =
        description.ok_or_else(|| Error::Other(format!("table {name}: no description")))?;
    if let Some(ttl) = p
        .pointer("/TimeToLiveSpecification")
        .filter(|t| t["Enabled"] == json!(true))
    {
        clients
            .dynamodb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(ttl["AttributeName"].as_str().unwrap_or("ttl"))
                    .build()
                    .map_err(|e| Error::Template(e.to_string()))?,
            )
            .send()
            .await
            .map_err(Error::aws)?;
    }
    Ok((
        description.table_arn().unwrap_or_default().to_owned(),
        description.latest_stream_arn().map(str::to_owned),
    ))
}
