use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aether_artifact::signature::{PublicKey, SigningKey};

use crate::args::{KeysGenerateArgs, KeysShowArgs, OutputFormat};
use crate::errors::CliError;
use crate::printer::Printer;

/// `~/.config/aether/signing-key.pem`: where keys are generated and looked for.
pub fn default_key_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("aether")
        .join("signing-key.pem")
}

/// `key.pem` → `key.pub.pem`.
pub fn public_key_path(private: &Path) -> PathBuf {
    let stem = private
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "key".into());
    private.with_file_name(format!("{stem}.pub.pem"))
}

pub fn generate(args: &KeysGenerateArgs, printer: &Printer) -> Result<(), CliError> {
    let path = args.out.clone().unwrap_or_else(default_key_path);
    if path.exists() && !args.force {
        return Err(CliError::KeyExists(path));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(CliError::io(format!("creating {}", dir.display())))?;
    }
    let pem = SigningKey::generate_pem().map_err(|source| CliError::Key {
        path: path.clone(),
        source,
    })?;
    let key = SigningKey::from_pem(&pem).map_err(|source| CliError::Key {
        path: path.clone(),
        source,
    })?;
    // Write the private key with mode 0600 from the first byte, via a temp file.
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(CliError::io(format!("writing {}", tmp.display())))?;
    file.write_all(pem.as_bytes())
        .map_err(CliError::io("writing the private key"))?;
    file.sync_all().map_err(CliError::io("writing the private key"))?;
    std::fs::rename(&tmp, &path).map_err(CliError::io("saving the private key"))?;
    let public = key.public_key();
    let pub_path = public_key_path(&path);
    std::fs::write(&pub_path, public.to_pem()).map_err(CliError::io("writing the public key"))?;

    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&serde_json::json!({
            "keyId": public.key_id(),
            "privateKey": path,
            "publicKey": pub_path,
        })),
        OutputFormat::Human => {
            printer.info(format!("Generated signing key {}", public.key_id()));
            printer.info(format!(
                "  private: {} (mode 0600, keep it secret)",
                path.display()
            ));
            printer.info(format!(
                "  public:  {} (give this to the cluster)",
                pub_path.display()
            ));
            printer.data(&public.key_id());
        }
    }
    Ok(())
}

/// `aether keys show`: the id and public half of a key, private or public.
pub fn show(args: &KeysShowArgs, printer: &Printer) -> Result<(), CliError> {
    let path = args.key.clone().unwrap_or_else(default_key_path);
    let text = std::fs::read_to_string(&path).map_err(CliError::io(format!("reading {}", path.display())))?;
    let key_error = |source| CliError::Key {
        path: path.clone(),
        source,
    };
    let public = if text.contains("PUBLIC KEY") {
        PublicKey::from_pem(&text).map_err(key_error)?
    } else {
        SigningKey::from_pem(&text).map_err(key_error)?.public_key()
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&serde_json::json!({
            "keyId": public.key_id(),
            "publicKeyPem": public.to_pem(),
        })),
        OutputFormat::Human => {
            printer.info(format!(
                "Key {}: a cluster admin trusts it with\n  kubectl -n aether-system create configmap aether-trusted-keys --from-file={}.pem=<this public key> (or add it to the existing one)",
                public.key_id(),
                public.key_id()
            ));
            printer.data(public.to_pem().trim_end());
        }
    }
    Ok(())
}
