//! What a site may ask of its node besides serving its code: resources of
//! its own that outlive its releases (a PostgreSQL database, ...). Each is
//! made at the first deploy that names it and kept after; a deploy never
//! drops or replaces one, and one site's resources are never visible to
//! another site.
//!
//! A service hands the deploy the credentials the app is given in its
//! environment (`CONFIG_*` variables and the like); the node keeps them in
//! root-only files under `Layout::secrets_dir`, never in a site's own
//! directories.

pub mod postgres;
