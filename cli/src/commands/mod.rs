pub mod deploy;
pub mod dev;
pub mod keys;
pub mod pack;
pub mod push;
pub mod status;
