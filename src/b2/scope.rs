//! What an application key may do, from `b2_authorize_account`, and the
//! check a run makes of it before its first request.
//!
//! Production restores run with restricted keys: one bucket, a name prefix,
//! read-only capabilities. B2 refuses a call outside the key's reach with
//! `401 unauthorized`, which says neither what the key may do nor what to ask
//! for instead; and a bucket the key does not cover looks the same as one
//! that does not exist. Checked here first, the error names the bucket,
//! prefix or capability that is missing and what to run instead.

use super::types::StorageApi;

/// The reach of one application key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScope {
    /// `None`: every bucket of the account.
    pub buckets: Option<Vec<ScopeBucket>>,
    /// Only names starting with this (`None` or empty: every name).
    pub name_prefix: Option<String>,
    /// What the key may do. Empty when the server sent none: then nothing is
    /// checked here (B2 always sends them; other servers may not).
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeBucket {
    pub id: String,
    /// `None`: the bucket was deleted since the key was made.
    pub name: Option<String>,
}

/// What a run is about to read.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Every name under a prefix (a restore), listed and then read.
    Listing { prefix: &'a str, read: bool },
    /// One name (a get); `list` when its versions are listed (`--as-of`).
    Name { name: &'a str, list: bool },
}

pub const LIST_BUCKETS: &str = "listBuckets";
pub const LIST_FILES: &str = "listFiles";
pub const READ_FILES: &str = "readFiles";

impl KeyScope {
    /// From v3's flat `bucketId`/`bucketName`, or v4's `allowed`.
    pub fn from_storage_api(storage: &StorageApi) -> KeyScope {
        if let Some(allowed) = &storage.allowed {
            return KeyScope {
                buckets: allowed.buckets.as_ref().map(|buckets| {
                    buckets
                        .iter()
                        .filter_map(|bucket| {
                            Some(ScopeBucket {
                                id: bucket.id.clone()?,
                                name: bucket.name.clone(),
                            })
                        })
                        .collect()
                }),
                name_prefix: allowed.name_prefix.clone(),
                capabilities: allowed.capabilities.clone(),
            };
        }
        KeyScope {
            buckets: storage.bucket_id.as_ref().map(|id| {
                vec![ScopeBucket {
                    id: id.clone(),
                    name: storage.bucket_name.clone(),
                }]
            }),
            name_prefix: storage.name_prefix.clone(),
            capabilities: storage.capabilities.clone(),
        }
    }

    /// The ID of `bucket` when the key names it: no `b2_list_buckets`
    /// needed (a key for one bucket may lack `listBuckets`).
    pub fn bucket_id(&self, bucket: &str) -> Option<&str> {
        self.buckets
            .as_ref()?
            .iter()
            .find(|allowed| allowed.name.as_deref() == Some(bucket))
            .map(|allowed| allowed.id.as_str())
    }

    /// Why this key cannot do what a run is about to do in `bucket`, in
    /// words an operator can act on; `Ok` when B2 should let it.
    pub fn check(&self, bucket: &str, reach: Reach<'_>) -> Result<(), String> {
        if let Some(buckets) = &self.buckets {
            if !buckets
                .iter()
                .any(|allowed| allowed.name.as_deref() == Some(bucket))
            {
                let named: Vec<String> = buckets
                    .iter()
                    .filter_map(|allowed| allowed.name.as_deref())
                    .map(|name| format!("{name:?}"))
                    .collect();
                return Err(if named.is_empty() {
                    format!(
                        "this application key is restricted to a bucket that no longer exists, \
                         so it cannot read bucket {bucket:?}: use a key for {bucket:?}"
                    )
                } else {
                    format!(
                        "this application key is restricted to bucket{} {}, not {bucket:?}: \
                         use a key for {bucket:?} (or one for all buckets)",
                        if named.len() == 1 { "" } else { "s" },
                        named.join(", ")
                    )
                });
            }
        }
        let mut needs: Vec<&str> = match reach {
            Reach::Listing { read: true, .. } | Reach::Name { list: true, .. } => {
                vec![LIST_FILES, READ_FILES]
            }
            Reach::Listing { read: false, .. } => vec![LIST_FILES],
            Reach::Name { list: false, .. } => vec![READ_FILES],
        };
        // A listing needs the bucket's ID: from the key, else b2_list_buckets.
        let lists = matches!(
            reach,
            Reach::Listing { .. } | Reach::Name { list: true, .. }
        );
        if lists && self.bucket_id(bucket).is_none() {
            needs.insert(0, LIST_BUCKETS);
        }
        if !self.capabilities.is_empty() {
            let missing: Vec<&str> = needs
                .iter()
                .copied()
                .filter(|need| !self.capabilities.iter().any(|has| has == need))
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "this application key lacks the {} capabilit{} (it has {}): \
                     use a key with {}",
                    missing.join(" and "),
                    if missing.len() == 1 { "y" } else { "ies" },
                    self.capabilities.join(", "),
                    needs.join(",")
                ));
            }
        }
        let Some(key_prefix) = self.name_prefix.as_deref().filter(|p| !p.is_empty()) else {
            return Ok(());
        };
        match reach {
            Reach::Listing { prefix, .. } if prefix.starts_with(key_prefix) => Ok(()),
            // A restore's prefix is a folder (it ends in `/`): only a key
            // prefix that is a folder too can be restored whole.
            Reach::Listing { prefix, .. }
                if key_prefix.starts_with(prefix) && key_prefix.ends_with('/') =>
            {
                Err(format!(
                    "this application key may only read names starting with {key_prefix:?}, \
                     and b2://{bucket}/{prefix} covers more than that: restore \
                     b2://{bucket}/{key_prefix} (names under it land relative to it), \
                     or use a key without a name prefix"
                ))
            }
            Reach::Listing { prefix, .. } if key_prefix.starts_with(prefix) => Err(format!(
                "this application key may only read names starting with {key_prefix:?}, \
                 which is not a folder, and b2://{bucket}/{prefix} covers more than that: \
                 restore a folder whose name starts with it (b2://{bucket}/{key_prefix}…/), \
                 or use a key whose name prefix ends in /"
            )),
            Reach::Listing { prefix, .. } => Err(format!(
                "this application key may only read names starting with {key_prefix:?}, \
                 so nothing under b2://{bucket}/{prefix} is readable with it"
            )),
            Reach::Name { name, .. } if name.starts_with(key_prefix) => Ok(()),
            Reach::Name { name, .. } => Err(format!(
                "this application key may only read names starting with {key_prefix:?}, \
                 not {name:?}: use a key whose prefix covers it"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::b2::parse_authorize;

    fn scope(
        buckets: Option<&[(&str, Option<&str>)]>,
        prefix: Option<&str>,
        caps: &[&str],
    ) -> KeyScope {
        KeyScope {
            buckets: buckets.map(|buckets| {
                buckets
                    .iter()
                    .map(|(id, name)| ScopeBucket {
                        id: id.to_string(),
                        name: name.map(str::to_string),
                    })
                    .collect()
            }),
            name_prefix: prefix.map(str::to_string),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
        }
    }

    const ALL: &[&str] = &["listBuckets", "listFiles", "readFiles"];
    const NO_LIST_BUCKETS: &[&str] = &["listFiles", "readFiles"];

    fn restore(prefix: &str) -> Reach<'_> {
        Reach::Listing { prefix, read: true }
    }

    #[test]
    fn an_unrestricted_key_reaches_everything() {
        let key = scope(None, None, ALL);
        assert_eq!(key.check("bkt", restore("")), Ok(()));
        assert_eq!(
            key.check(
                "any",
                Reach::Name {
                    name: "x",
                    list: true
                }
            ),
            Ok(())
        );
        assert_eq!(key.bucket_id("bkt"), None);
        // A server that sends no capabilities is not second-guessed.
        assert_eq!(scope(None, None, &[]).check("bkt", restore("")), Ok(()));
    }

    #[test]
    fn a_bucket_key_names_its_bucket_and_gives_its_id() {
        let key = scope(Some(&[("b1", Some("photos"))]), None, ALL);
        assert_eq!(key.bucket_id("photos"), Some("b1"));
        assert_eq!(key.bucket_id("other"), None);
        assert_eq!(key.check("photos", restore("")), Ok(()));
        let refused = key.check("backups", restore("")).unwrap_err();
        assert!(
            refused.contains("restricted to bucket \"photos\", not \"backups\""),
            "{refused}"
        );
        let gone = scope(Some(&[("b1", None)]), None, ALL)
            .check("photos", restore(""))
            .unwrap_err();
        assert!(gone.contains("no longer exists"), "{gone}");
    }

    #[test]
    fn capabilities_are_those_the_run_needs() {
        // Listing a bucket the key does not name needs b2_list_buckets.
        let no_buckets = scope(None, None, NO_LIST_BUCKETS);
        let refused = no_buckets.check("b", restore("")).unwrap_err();
        assert!(
            refused.contains("lacks the listBuckets capability"),
            "{refused}"
        );
        assert!(
            refused.contains("use a key with listBuckets,listFiles,readFiles"),
            "{refused}"
        );
        assert_eq!(
            no_buckets.check(
                "b",
                Reach::Name {
                    name: "x",
                    list: false
                }
            ),
            Ok(())
        );
        let bucket_key = scope(Some(&[("b1", Some("b"))]), None, NO_LIST_BUCKETS);
        assert_eq!(bucket_key.check("b", restore("")), Ok(()));
        let read_only = scope(None, None, &["listBuckets", "readFiles"]);
        assert_eq!(
            read_only.check(
                "b",
                Reach::Name {
                    name: "x",
                    list: false
                }
            ),
            Ok(())
        );
        let refused = read_only.check("b", restore("")).unwrap_err();
        assert!(
            refused.contains("lacks the listFiles capability"),
            "{refused}"
        );
        assert!(
            refused.contains("use a key with listBuckets,listFiles,readFiles"),
            "{refused}"
        );
        let list_only = scope(None, None, &["listBuckets", "listFiles"]);
        assert_eq!(
            list_only.check(
                "b",
                Reach::Listing {
                    prefix: "",
                    read: false
                }
            ),
            Ok(())
        );
        assert!(list_only.check("b", restore("")).is_err());
        let neither = scope(None, None, &["listBuckets", "writeFiles"])
            .check("b", restore(""))
            .unwrap_err();
        assert!(
            neither.contains("listFiles and readFiles capabilities"),
            "{neither}"
        );
    }

    #[test]
    fn a_name_prefix_covers_what_starts_with_it() {
        let key = scope(None, Some("backups/"), ALL);
        assert_eq!(key.check("b", restore("backups/")), Ok(()));
        assert_eq!(key.check("b", restore("backups/db/")), Ok(()));
        let wider = key.check("b", restore("")).unwrap_err();
        assert!(wider.contains("restore b2://b/backups/"), "{wider}");
        // `backups` without the slash would also list `backups2/…`.
        assert!(
            key.check("b", restore("backups"))
                .unwrap_err()
                .contains("covers more")
        );
        let elsewhere = key.check("b", restore("photos/")).unwrap_err();
        assert!(
            elsewhere.contains("nothing under b2://b/photos/"),
            "{elsewhere}"
        );
        assert_eq!(
            key.check(
                "b",
                Reach::Name {
                    name: "backups/a",
                    list: false
                }
            ),
            Ok(())
        );
        assert!(
            key.check(
                "b",
                Reach::Name {
                    name: "photos/a",
                    list: false
                }
            )
            .is_err()
        );
        // A prefix that is not a folder: no folder restore covers less.
        let partial = scope(None, Some("backups/db-"), ALL);
        let refused = partial.check("b", restore("backups/")).unwrap_err();
        assert!(refused.contains("which is not a folder"), "{refused}");
        assert_eq!(partial.check("b", restore("backups/db-2026/")), Ok(()));
        // An empty prefix restricts nothing.
        assert_eq!(scope(None, Some(""), ALL).check("b", restore("")), Ok(()));
    }

    #[test]
    fn read_from_v3_and_v4_answers() {
        let v3 = br#"{"accountId":"a","authorizationToken":"t","apiInfo":{"storageApi":{
            "apiUrl":"https://api","downloadUrl":"https://f","bucketId":"b1","bucketName":"bkt",
            "capabilities":["listFiles","readFiles"],"namePrefix":"p/"}}}"#;
        let parsed = parse_authorize(v3).unwrap();
        assert_eq!(
            KeyScope::from_storage_api(&parsed.api_info.storage_api),
            scope(
                Some(&[("b1", Some("bkt"))]),
                Some("p/"),
                &["listFiles", "readFiles"]
            )
        );
        let v4 = br#"{"accountId":"a","authorizationToken":"t","apiInfo":{"storageApi":{
            "apiUrl":"https://api","downloadUrl":"https://f","allowed":{
            "buckets":[{"id":"b1","name":"bkt"},{"id":"b2","name":null}],
            "capabilities":["readFiles"],"namePrefix":null}}}}"#;
        let parsed = parse_authorize(v4).unwrap();
        assert_eq!(
            KeyScope::from_storage_api(&parsed.api_info.storage_api),
            scope(
                Some(&[("b1", Some("bkt")), ("b2", None)]),
                None,
                &["readFiles"]
            )
        );
        let open = br#"{"accountId":"a","authorizationToken":"t","apiInfo":{"storageApi":{
            "apiUrl":"https://api","downloadUrl":"https://f","bucketId":null,"bucketName":null,
            "capabilities":["listFiles"],"namePrefix":null}}}"#;
        let parsed = parse_authorize(open).unwrap();
        assert_eq!(
            KeyScope::from_storage_api(&parsed.api_info.storage_api),
            scope(None, None, &["listFiles"])
        );
    }
}
