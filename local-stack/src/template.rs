//! Reading `template.yaml`: resources, their properties with intrinsic functions, and the
//! functions' event sources.
//!
//! The local stack reads the template the way CloudFormation would for the resource kinds the
//! reference system uses, so a function (or table, queue, rule) added to the template appears
//! locally without code changes. Intrinsics are resolved against [`Names`], which provisioning
//! fills in as resources are created (a table's stream ARN is only known then).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};
use serde_norway::Value as Yaml;

use crate::Error;

/// The account moto and the local stack use.
pub const ACCOUNT: &str = "123456789012";

/// A parsed template: resources in the template's order, parameters' defaults and globals.
#[derive(Debug, Clone)]
pub struct Template {
    /// Logical id → resource, in the template's order.
    pub resources: Vec<(String, Resource)>,
    /// Parameter name → default value.
    pub parameters: HashMap<String, String>,
    /// `Globals.Function` (environment, timeout, memory).
    pub function_globals: Value,
    /// Output name → its `Value` (unresolved).
    pub outputs: HashMap<String, Value>,
}

/// One resource: its type and its properties with intrinsics kept as `{"Ref": ..}`,
/// `{"Fn::GetAtt": [..]}`, `{"Fn::Sub": ..}` objects.
#[derive(Debug, Clone)]
pub struct Resource {
    /// `AWS::DynamoDB::Table`, `AWS::Serverless::Function`, ...
    pub kind: String,
    /// The resource's `Properties`.
    pub properties: Value,
    /// The resource's `Metadata`.
    pub metadata: Value,
}

impl Template {
    /// Reads and parses a template file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Template(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text)
    }

    /// Parses a template's text (YAML with CloudFormation's short-form tags, or JSON).
    pub fn parse(text: &str) -> Result<Self, Error> {
        let yaml: Yaml = serde_norway::from_str(text)
            .map_err(|e| Error::Template(format!("template.yaml is not valid YAML: {e}")))?;
        let doc = to_json(yaml)?;
        let mut resources = Vec::new();
        if let Some(map) = doc.get("Resources").and_then(Value::as_object) {
            for (id, r) in map {
                resources.push((
                    id.clone(),
                    Resource {
                        kind: r
                            .get("Type")
                            .and_then(Value::as_str)
                            .ok_or_else(|| Error::Template(format!("{id} has no Type")))?
                            .to_owned(),
                        properties: r.get("Properties").cloned().unwrap_or(Value::Null),
                        metadata: r.get("Metadata").cloned().unwrap_or(Value::Null),
                    },
                ));
            }
        }
        let parameters = doc
            .get("Parameters")
            .and_then(Value::as_object)
            .map(|ps| {
                ps.iter()
                    .filter_map(|(k, p)| Some((k.clone(), scalar(p.get("Default")?)?)))
                    .collect()
            })
            .unwrap_or_default();
        let function_globals = doc
            .pointer("/Globals/Function")
            .cloned()
            .unwrap_or(Value::Null);
        let outputs = doc
            .get("Outputs")
            .and_then(Value::as_object)
            .map(|os| {
                os.iter()
                    .filter_map(|(k, o)| Some((k.clone(), o.get("Value")?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self {
            resources,
            parameters,
            function_globals,
            outputs,
        })
    }

    /// The resources of one type, in the template's order.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Resource)> {
        self.resources
            .iter()
            .filter(move |(_, r)| r.kind == kind)
            .map(|(id, r)| (id.as_str(), r))
    }

    /// The resource with this logical id.
    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|(i, _)| i == id).map(|(_, r)| r)
    }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// YAML → JSON, turning short-form tags (`!Ref X`, `!GetAtt A.B`, `!Sub s`) into their long form.
fn to_json(yaml: Yaml) -> Result<Value, Error> {
    Ok(match yaml {
        Yaml::Null => Value::Null,
        Yaml::Bool(b) => Value::Bool(b),
        Yaml::Number(n) => serde_json::to_value(&n).unwrap_or(Value::Null),
        Yaml::String(s) => Value::String(s),
        Yaml::Sequence(items) => {
            Value::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?)
        }
        Yaml::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s,
                    other => serde_norway::to_string(&other)
                        .map_err(|e| Error::Template(e.to_string()))?
                        .trim()
                        .to_owned(),
                };
                out.insert(key, to_json(v)?);
            }
            Value::Object(out)
        }
        Yaml::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let tag = tag.trim_start_matches('!');
            let inner = to_json(tagged.value)?;
            let name = match tag {
                "Ref" => "Ref".to_owned(),
                "GetAtt" => {
                    // `!GetAtt A.B` is `Fn::GetAtt: [A, B]`
                    let parts = match &inner {
                        Value::String(s) => match s.split_once('.') {
                            Some((a, b)) => Value::from(vec![a, b]),
                            None => inner.clone(),
                        },
                        _ => inner.clone(),
                    };
                    return Ok(single("Fn::GetAtt", parts));
                }
                other => format!("Fn::{other}"),
            };
            single(&name, inner)
        }
    })
}

fn single(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.to_owned(), value);
    Value::Object(m)
}

/// What intrinsics resolve to: each resource's `Ref` and attributes, parameters, pseudo
/// parameters.
#[derive(Debug, Clone, Default)]
pub struct Names {
    refs: HashMap<String, String>,
    attrs: HashMap<(String, String), String>,
}

impl Names {
    /// Names for a stack in a region, with the template's parameter defaults.
    pub fn new(template: &Template, stack: &str, region: &str) -> Self {
        let mut names = Self::default();
        for (k, v) in &template.parameters {
            names.refs.insert(k.clone(), v.clone());
        }
        for (k, v) in [
            ("AWS::StackName", stack),
            ("AWS::Region", region),
            ("AWS::AccountId", ACCOUNT),
            ("AWS::Partition", "aws"),
            ("AWS::URLSuffix", "amazonaws.com"),
            ("ServerlessHttpApi", "local"),
        ] {
            names.refs.insert(k.to_owned(), v.to_owned());
        }
        names
    }

    /// Records what `!Ref id` gives.
    pub fn set_ref(&mut self, id: &str, value: impl Into<String>) {
        self.refs.insert(id.to_owned(), value.into());
    }

    /// Records what `!GetAtt id.attr` gives.
    pub fn set_attr(&mut self, id: &str, attr: &str, value: impl Into<String>) {
        self.attrs
            .insert((id.to_owned(), attr.to_owned()), value.into());
    }

    /// What `!Ref id` gives, if known.
    pub fn get_ref(&self, id: &str) -> Option<&str> {
        self.refs.get(id).map(String::as_str)
    }

    /// What `!GetAtt id.attr` gives, if known.
    pub fn get_attr(&self, id: &str, attr: &str) -> Option<&str> {
        self.attrs
            .get(&(id.to_owned(), attr.to_owned()))
            .map(String::as_str)
    }

    /// The stack's name.
    pub fn stack(&self) -> &str {
        self.get_ref("AWS::StackName").unwrap_or("local")
    }

    /// The region.
    pub fn region(&self) -> &str {
        self.get_ref("AWS::Region").unwrap_or("us-east-1")
    }

    /// Resolves every intrinsic in `value`.
    pub fn resolve(&self, value: &Value) -> Result<Value, Error> {
        Ok(match value {
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m
                    .iter()
                    .next()
                    .ok_or_else(|| Error::Template("empty".into()))?;
                match k.as_str() {
                    "Ref" => Value::String(self.reference(v)?),
                    "Fn::GetAtt" => Value::String(self.get_att(v)?),
                    "Fn::Sub" => Value::String(self.sub(v)?),
                    "Fn::Join" => Value::String(self.join(v)?),
                    _ => {
                        let mut out = Map::new();
                        out.insert(k.clone(), self.resolve(v)?);
                        Value::Object(out)
                    }
                }
            }
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), self.resolve(v)?)))
                    .collect::<Result<_, Error>>()?,
            ),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.resolve(v))
                    .collect::<Result<_, _>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Resolves `value` to a string.
    pub fn string(&self, value: &Value) -> Result<String, Error> {
        match self.resolve(value)? {
            Value::String(s) => Ok(s),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            other => Err(Error::Template(format!("expected a string, found {other}"))),
        }
    }

    fn reference(&self, v: &Value) -> Result<String, Error> {
        let id = v
            .as_str()
            .ok_or_else(|| Error::Template(format!("Ref of {v}")))?;
        self.get_ref(id)
            .map(str::to_owned)
            .ok_or_else(|| Error::Template(format!("!Ref {id}: unknown or not created yet")))
    }

    /// The logical id of the resource a `Fn::GetAtt` names, in either of its forms
    /// (`[Id, Attr]` or `"Id.Attr"`); `None` for anything else.
    pub fn get_att_resource(value: &Value) -> Option<&str> {
        match value.get("Fn::GetAtt")? {
            Value::Array(items) => items.first()?.as_str(),
            Value::String(s) => s.split('.').next(),
            _ => None,
        }
    }

    fn get_att(&self, v: &Value) -> Result<String, Error> {
        let parts: Vec<String> = match v {
            Value::Array(items) => items
                .iter()
                .map(|i| self.string(i))
                .collect::<Result<_, _>>()?,
            Value::String(s) => s.splitn(2, '.').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let [id, attr] = parts.as_slice() else {
            return Err(Error::Template(format!("!GetAtt {v}")));
        };
        self.get_attr(id, attr).map(str::to_owned).ok_or_else(|| {
            Error::Template(format!("!GetAtt {id}.{attr}: unknown or not created yet"))
        })
    }

    fn sub(&self, v: &Value) -> Result<String, Error> {
        let (text, vars) = match v {
            Value::String(s) => (s.as_str(), BTreeMap::new()),
            Value::Array(items) => {
                let text = items.first().and_then(Value::as_str).unwrap_or_default();
                let mut vars = BTreeMap::new();
                if let Some(m) = items.get(1).and_then(Value::as_object) {
                    for (k, v) in m {
                        vars.insert(k.clone(), self.string(v)?);
                    }
                }
                (text, vars)
            }
            _ => return Err(Error::Template(format!("!Sub {v}"))),
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| Error::Template(format!("!Sub {text}: unclosed ${{")))?;
            let name = &after[..end];
            let value = if let Some(literal) = name.strip_prefix('!') {
                format!("${{{literal}}}")
            } else if let Some(v) = vars.get(name) {
                v.clone()
            } else if let Some((id, attr)) = name.split_once('.') {
                self.get_att(&Value::from(vec![id, attr]))?
            } else {
                self.reference(&Value::from(name))?
            };
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn join(&self, v: &Value) -> Result<String, Error> {
        let sep = v.get(0).and_then(Value::as_str).unwrap_or_default();
        let items = match v.get(1).map(|i| self.resolve(i)).transpose()? {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        Ok(items
            .iter()
            .filter_map(scalar)
            .collect::<Vec<_>>()
            .join(sep))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
Parameters:
  Stage: {Type: String, Default: dev}
Globals:
  Function:
    Timeout: 60
Resources:
  Table:
    Type: AWS::DynamoDB::Table
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      FunctionName: !Sub "${AWS::StackName}-fn-${Stage}"
      Stream: !GetAtt Table.StreamArn
      Table: !Ref Table
      Joined: !Join ["/", [a, !Ref Stage]]
      Literal: !Sub "${!NotAVar} ${Table.Arn}"
"#;

    #[test]
    fn a_get_att_names_its_resource_in_either_form() {
        let list = serde_json::json!({"Fn::GetAtt": ["Queue", "Arn"]});
        let dotted = serde_json::json!({"Fn::GetAtt": "Queue.Arn"});
        assert_eq!(Names::get_att_resource(&list), Some("Queue"));
        assert_eq!(Names::get_att_resource(&dotted), Some("Queue"));
        assert_eq!(Names::get_att_resource(&serde_json::json!("arn:q")), None);
    }

    #[test]
    fn short_form_intrinsics_resolve() {
        let t = Template::parse(TEXT).unwrap();
        let mut names = Names::new(&t, "s", "us-east-1");
        names.set_ref("Table", "s-Table");
        names.set_attr("Table", "StreamArn", "arn:stream");
        names.set_attr("Table", "Arn", "arn:table");
        let props = names
            .resolve(&t.resource("Fn").unwrap().properties)
            .unwrap();
        assert_eq!(props["FunctionName"], "s-fn-dev");
        assert_eq!(props["Stream"], "arn:stream");
        assert_eq!(props["Table"], "s-Table");
        assert_eq!(props["Joined"], "a/dev");
        assert_eq!(props["Literal"], "${NotAVar} arn:table");
        assert_eq!(t.function_globals["Timeout"], 60);
    }

    #[test]
    fn unknown_names_are_errors_not_panics() {
        let t = Template::parse(TEXT).unwrap();
        let names = Names::new(&t, "s", "us-east-1");
        let err = names
            .resolve(&t.resource("Fn").unwrap().properties)
            .unwrap_err();
        assert!(err.to_string().contains("Table"), "{err}");
    }

    #[test]
    fn the_project_template_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
        let t = Template::load(&path).unwrap();
        assert_eq!(t.of_kind("AWS::Serverless::Function").count(), 6);
    }
}
