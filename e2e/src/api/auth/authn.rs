//! Who is asking: the bearer token (the admin's, or a service-account token), anonymous
//! without one, and impersonation (`Impersonate-User`, `Impersonate-Group`).

use axum::http::HeaderMap;

use super::rbac::{self, Attributes};
use super::{
    ANONYMOUS, AUTHENTICATED, Authority, ISSUER, UNAUTHENTICATED, UserInfo, service_account_groups, service_account_of,
};
use crate::api::error::ApiError;
use crate::api::store::Store;

/// What Kubernetes answers for a credential it does not accept.
pub fn unauthorized() -> ApiError {
    ApiError { code: 401, reason: "Unauthorized", message: "Unauthorized".into(), details: None }
}

/// The identity of a request. A bad or expired token is refused (401); no token at all is
/// `system:anonymous`, and RBAC decides what that may do.
///
/// # Errors
/// 401 Unauthorized for a credential that is not valid.
pub fn authenticate(authority: &Authority, store: &Store, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Ok(UserInfo::anonymous());
    };
    let value = value.to_str().map_err(|_| unauthorized())?;
    let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        // Basic auth and the like are not offered.
        return Err(unauthorized());
    };
    authenticate_token(authority, store, token.trim(), &[ISSUER.to_string()]).map(|(u, _)| u).map_err(|why| {
        tracing::debug!(%why, "token refused");
        unauthorized()
    })
}

/// Authenticates a bearer token for one of `audiences`; returns the user and the audiences
/// the token is good for among them (TokenReview reports both).
pub fn authenticate_token(
    authority: &Authority,
    store: &Store,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), String> {
    if !token.is_empty() && token == authority.admin_token() {
        // The admin token is the API server's own credential: good for its audience.
        let good: Vec<String> = audiences.iter().filter(|a| *a == ISSUER).cloned().collect();
        if good.is_empty() {
            return Err("token audiences is invalid for the target audiences".into());
        }
        return Ok((UserInfo::admin(), good));
    }
    authority.verify_service_account_token(store, token, audiences)
}

fn header_values(headers: &HeaderMap, name: &str) -> Result<Vec<String>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map(str::to_string).map_err(|_| ApiError::bad_request(format!("{name} is not text"))))
        .collect()
}

/// Applies `Impersonate-User` / `Impersonate-Group`: the real user must be allowed to
/// `impersonate` each (users, groups, or the service account); the request then runs as the
/// impersonated identity.
///
/// # Errors
/// 403 Forbidden when the real user may not impersonate; 400 for groups without a user.
pub fn impersonate(store: &Store, real: UserInfo, headers: &HeaderMap) -> Result<UserInfo, ApiError> {
    let users = header_values(headers, "impersonate-user")?;
    let groups = header_values(headers, "impersonate-group")?;
    if users.is_empty() {
        if groups.is_empty() {
            return Ok(real);
        }
        return Err(ApiError::bad_request(format!(
            "requested {groups:?} without impersonating a user (Impersonate-Group needs Impersonate-User)"
        )));
    }
    if users.len() > 1 {
        return Err(ApiError::bad_request("only one Impersonate-User may be given"));
    }
    let name = users[0].clone();
    let check = |a: Attributes| -> Result<(), ApiError> {
        let d = rbac::authorize(store, &a);
        if d.allowed { Ok(()) } else { Err(rbac::forbidden(&a, &d.reason)) }
    };
    let mut user = UserInfo { name: name.clone(), ..Default::default() };
    match service_account_of(&name) {
        Some((ns, sa)) => {
            check(Attributes::resource(&real, "impersonate", "", "serviceaccounts", "", ns, sa))?;
            if groups.is_empty() {
                user.groups = service_account_groups(ns);
            }
        }
        None => check(Attributes::resource(&real, "impersonate", "", "users", "", "", &name))?,
    }
    for g in &groups {
        check(Attributes::resource(&real, "impersonate", "", "groups", "", "", g))?;
        if !user.groups.contains(g) {
            user.groups.push(g.clone());
        }
    }
    // As Kubernetes does: an impersonated user is authenticated (anonymous excepted).
    let implied = if name == ANONYMOUS { UNAUTHENTICATED } else { AUTHENTICATED };
    if !user.groups.iter().any(|g| g == implied) {
        user.groups.push(implied.into());
    }
    tracing::trace!(real = %real.name, user = %user.name, "impersonating");
    Ok(user)
}
